"""How one actor writes, beyond what it asks: its language and whether it pastes long documents.

Real API traffic is multilingual and its prompt lengths span from "ok" to pasted reports of
tens of thousands of characters. The grammar writes short English prompts only, so a model
trained on it never saw a non-ASCII character or a long paste, and read those inputs of real
traffic with weights that training never moved. Every family draws the same habit, benign and
attack alike: language and length are marginals to randomise, not a signal.

A habit rewrites text as a pure function of the text (keyed hashes, no shared random state):
a multi-turn history re-sent on every request keeps its earlier turns exactly as first written,
and the same prompt sent twice stays identical, so exact repetition is untouched.

A person opens or pastes some requests and not others (keyed on the whole text); a script
(`draw(..., script=True)`) does one thing to every prompt, so its near-duplicates stay
near-duplicates and a campaign's accounts keep one prompt shape. Pasted documents are built from
sentence frames with slots filled from word lists (about 58,000 word patterns before the
numbers), so two pastes share words the way documents of one genre do, not whole sentences.

Known simplification: translation splits on spaces only, so a word with punctuation attached
is a different word from the bare one.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

# A few dozen everyday words per language: enough to give real scripts and character shares,
# not a translation. Latin-script languages keep mostly ASCII text with some accents; the others
# are written in their own scripts.
WORDS_BY_LANGUAGE: dict[str, list[str]] = {
    "es": ["¿cómo", "qué", "está", "código", "función", "año", "también", "búsqueda", "número", "pequeño", "información", "explicación", "según", "día", "página", "más", "ejemplo", "datos", "aquí", "señal"],
    "de": ["wie", "schreibe", "größe", "für", "übersetzen", "möglich", "erklären", "bitte", "schön", "zurück", "müssen", "tabelle", "ändern", "können", "straße", "über", "daten", "beispiel", "grün", "weiß"],
    "fr": ["comment", "écrire", "fonction", "très", "où", "déjà", "après", "réponse", "problème", "exemple", "données", "expliquer", "français", "être", "clé", "même", "voilà", "façon", "élève", "père"],
    "pt": ["como", "função", "não", "você", "então", "código", "informação", "também", "exemplo", "dados", "até", "já", "é", "preço", "ação", "questão", "explicação", "lá", "irmão", "avó"],
    "ru": ["как", "написать", "функцию", "пожалуйста", "объясни", "данные", "пример", "почему", "ошибка", "код", "текст", "список", "время", "вопрос", "ответ", "можно", "сделать", "файл", "число", "работа"],
    "zh": ["如何", "写", "一个", "函数", "请", "解释", "数据", "例子", "为什么", "错误", "代码", "文本", "列表", "时间", "问题", "回答", "可以", "文件", "数字", "工作"],
    "ja": ["どうやって", "書く", "関数", "ください", "説明", "データ", "例", "なぜ", "エラー", "コード", "テキスト", "リスト", "時間", "質問", "答え", "できます", "ファイル", "数字", "仕事", "日本語"],
    "ko": ["어떻게", "작성", "함수", "주세요", "설명", "데이터", "예시", "왜", "오류", "코드", "텍스트", "목록", "시간", "질문", "답변", "가능", "파일", "숫자", "작업", "한국어"],
    "ar": ["كيف", "اكتب", "دالة", "من فضلك", "اشرح", "بيانات", "مثال", "لماذا", "خطأ", "رمز", "نص", "قائمة", "وقت", "سؤال", "جواب", "يمكن", "ملف", "رقم", "عمل", "العربية"],
    "hi": ["कैसे", "लिखें", "फ़ंक्शन", "कृपया", "समझाइए", "डेटा", "उदाहरण", "क्यों", "त्रुटि", "कोड", "पाठ", "सूची", "समय", "प्रश्न", "उत्तर", "सकते", "फ़ाइल", "संख्या", "काम", "हिंदी"],
}
LANGUAGES = list(WORDS_BY_LANGUAGE)
# Filler for pasted documents: report-like sentence frames with numbers, as real pastes have,
# whose slots ({a}, {b}: nouns; {v}: a verb; {n}, {p}: numbers) are filled per sentence.
_PASTE_FRAMES = [
    "Revenue for the {a} was {n} thousand, up {p} percent on the previous {b}.",
    "Section {n}. The parties agree that the {a} above {v} the {b} from the effective date.",
    "The meeting covered the {a}, the {b} and the open incidents from last week.",
    "Error log line {n}: the {a} timed out after {p} seconds while waiting for the {b}.",
    "Customer feedback mentioned the {a}, the {b} and the mobile app's checkout flow.",
    "Table {p}: region, {a}, returns and net margin for each {b}.",
    "The patient reported mild symptoms for {p} days and no history of {a} or {b}.",
    "Chapter {p} begins with the narrator returning to the {a} after {n} years away.",
    "We {v} the {a} before the {b} and logged {n} entries in total.",
    "Note {p}: the {a} must {v} every {b} by the end of the month.",
    "Step {p}. Open the {a}, then {v} the {b} and wait {n} milliseconds.",
    "Q{p} summary: the {a} team will {v} the {b} in {n} stores.",
]
_PASTE_NOUNS = [
    "quarter", "contract", "roadmap", "budget", "invoice", "server", "schedule", "warehouse", "policy", "survey",
    "dataset", "pipeline", "account", "shipment", "report", "module", "license", "ticket", "patient file", "storefront",
    "migration", "cluster", "audit", "forecast", "supplier", "campaign", "backlog", "release", "cache", "firmware",
]
_PASTE_VERBS = ["review", "update", "replace", "approve", "archive", "migrate", "inspect", "renew", "cancel", "verify", "deploy", "measure"]


# How people open a request. Independent people phrase the same question differently, one
# script phrases it one way: the opener an actor uses is part of what a campaign shares.
_GREETINGS = ["hey", "hi", "hello there", "pls", "quick q", "so", "ok", "question:", "help -", "hmm", "yo", "dear assistant,", "good morning!"]
_ASKS = ["", "i need", "can you", "could you please", "i wonder,", "tell me"]


def _key(*parts: str) -> int:
    return zlib.crc32("\0".join(parts).encode("utf-8"))


@dataclass(frozen=True)
class TextHabit:
    """language: None writes the grammar's English; otherwise that share of words (`mix`) is
    written in the language. paste_p: the share of prompts followed by a pasted document of
    about `paste_chars` characters (log-normal around it). openers: this writer's ways of
    opening a request, used on a share `opener_p` of its prompts."""

    language: str | None = None
    mix: float = 0.0
    paste_p: float = 0.0
    paste_chars: int = 0
    openers: tuple[str, ...] = ()
    opener_p: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, script: bool = False) -> "TextHabit":
        """A writer's habit. A script opens every prompt one way or none, and pastes into every
        prompt or none: code does the same thing each time."""
        language = rng.choice(LANGUAGES) if rng.random() < 0.18 else None
        mix = rng.uniform(0.3, 1.0) if language else 0.0
        paste_p = rng.uniform(0.02, 0.4) if rng.random() < 0.15 else 0.0
        paste_chars = int(rng.lognormvariate(8.0, 1.0)) if paste_p else 0  # median about 3,000 characters
        openers: tuple[str, ...] = ()
        opener_p = 0.0
        if rng.random() < 0.6:
            openers = tuple(f"{rng.choice(_GREETINGS)} {rng.choice(_ASKS)}".strip() for _ in range(rng.randint(1, 3)))
            opener_p = rng.uniform(0.2, 0.9)
        if script:
            openers, opener_p = openers[:1], float(bool(opener_p))
            paste_p = float(bool(paste_p))
        return cls(language, mix, paste_p, min(max(paste_chars, 400), 40_000), openers, opener_p)

    @property
    def plain(self) -> bool:
        return self.language is None and not self.paste_p and not self.opener_p

    def rewrite(self, text: str) -> str:
        """The text as this actor writes it; the same text always rewrites the same way."""
        if self.plain or not text:
            return text
        out = text
        if self.opener_p and (h := _key("open", text)) % 10_000 < self.opener_p * 10_000:
            out = f"{self.openers[(h >> 16) % len(self.openers)]} {out[:1].lower()}{out[1:]}"
        if self.language:
            out = self._translate(out)
        if self.paste_p and (_key("paste", text) % 10_000) < self.paste_p * 10_000:
            # The request first, as people paste ("Summarise this: ..."): the document's
            # boilerplate start is not what the request's shape shows.
            out = out + "\n\n" + self._paste(text)
        return out

    def rewrite_reply(self, text: str) -> str:
        """An assistant turn in the history: in the actor's language, never with a paste."""
        return self._translate(text) if self.language and text else text

    def _translate(self, text: str) -> str:
        assert self.language is not None
        vocab = WORDS_BY_LANGUAGE[self.language]
        cut = int(self.mix * 1000)
        words = text.split(" ")
        # Word by word, keyed on the word itself: one English word always becomes the same
        # foreign word for this actor, so edits and repeats keep their shape.
        return " ".join(vocab[h % len(vocab)] if (h := _key(self.language, w)) % 1000 < cut else w for w in words)

    def _paste(self, text: str) -> str:
        r = random.Random(_key("doc", text))
        target = int(self.paste_chars * r.lognormvariate(0.0, 0.5))
        parts: list[str] = []
        size = 0
        while size < target:
            a, b = r.sample(_PASTE_NOUNS, 2)
            s = r.choice(_PASTE_FRAMES).format(a=a, b=b, v=r.choice(_PASTE_VERBS), n=r.randint(2, 9999), p=r.randint(1, 99))
            parts.append(s)
            size += len(s) + 1
        return " ".join(parts)
