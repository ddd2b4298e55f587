"""A keyed distillation watermark in the text of answers Moat perturbs, and its detector.

A proxy cannot change how the upstream samples, so the mark is put in the text afterwards:
wherever the answer uses one of a fixed list of interchangeable wordings (PAIRS: "do not" /
"don't", "for example" / "for instance", "often" / "frequently", "everyone" /
"everybody", ...), the wording is replaced
by the one a keyed hash of (the pair, the word before it) picks. Every such place ("carrier")
then carries one keyed bit. A copier who trains on the harvested answers learns those word
choices along with everything else.

Detection: read the suspect text the same way; at each carrier, does the wording match the
key's choice for its context? Without the key's influence each distinct (pair, previous word)
is a fair coin (the choice is a keyed hash, independent of the text), so the hits of n carriers
follow Binomial(n, 1/2) and the p-value is its exact upper tail. A carrier whose (pair,
previous word) was already counted is skipped: a repeated phrase would otherwise count one coin
many times. Only the previous word is read, so dropping or changing a word elsewhere costs at
most the carriers next to it.

Why these pairs: both wordings mean the same in (nearly) every context, in both directions.
Pairs that break somewhere were left out ("it's" -> "it is" fails in "it's been", "big" ->
"large" in "by and large", "nearly" -> "almost" in "not nearly", "make sure" -> "ensure" in
"make sure to"), and a few pairs skip the contexts where they would ("kind of" after "so",
"a lot of" after "quite", "these days" after "of"). The pronoun contractions ("I am" / "I'm") only count before a further word
("Yes, I am." has no contraction), and "do not" never after "to" ("to do not only"). Code
(fenced blocks and inline `spans`) is never touched. Invisible characters are not used: they
are stripped by any normalisation. The cost: the text of an answer changes wording, never
meaning; logprob tokens of the same answer (if any) still show the upstream's wording.

Streaming: `TextWatermarker.feed` holds back the end of the text until the next words show
whether it is a carrier, so a stream gets exactly the text the whole answer would get.
Network-free and numpy-free, like the rest of the actions library."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WatermarkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_WATERMARK_", extra="ignore")

    enabled: bool = Field(default=False, description="watermark the text of answers to requests Moat perturbs")
    secret: SecretStr | None = Field(default=None, description="the deployment's watermark key (32+ random bytes, the same on every replica, kept for detection); required when enabled")

    @model_validator(mode="after")
    def _needs_secret(self) -> "WatermarkSettings":
        if self.enabled and (self.secret is None or len(self.secret.get_secret_value()) < 16):
            raise ValueError("MOAT_WATERMARK_SECRET (16+ characters) is required when MOAT_WATERMARK_ENABLED is set: without a stable key the mark cannot be detected")
        return self


@dataclass(frozen=True)
class Pair:
    variants: tuple[str, str]
    needs_next_word: bool = False  # a contraction that cannot end a clause
    not_after: frozenset[str] = frozenset()  # previous words after which the pair is not a carrier


_NEG = frozenset({"to"})
# "kind of you" (nice of you) is not "sort of you"; after these, "kind of" may be that one.
_KIND = frozenset({"so", "very", "really", "too", "how", "was", "is", "be", "been", "are", "were", "it's", "that's"})
PAIRS: tuple[Pair, ...] = (
    Pair(("do not", "don't"), not_after=_NEG),
    Pair(("does not", "doesn't")),
    Pair(("did not", "didn't")),
    Pair(("is not", "isn't")),
    Pair(("are not", "aren't")),
    Pair(("was not", "wasn't")),
    Pair(("were not", "weren't")),
    Pair(("cannot", "can't")),
    Pair(("will not", "won't")),
    Pair(("would not", "wouldn't")),
    Pair(("should not", "shouldn't")),
    Pair(("could not", "couldn't")),
    Pair(("has not", "hasn't")),
    Pair(("have not", "haven't")),
    Pair(("had not", "hadn't")),
    Pair(("I am", "I'm"), needs_next_word=True),
    Pair(("you are", "you're"), needs_next_word=True),
    Pair(("we are", "we're"), needs_next_word=True),
    Pair(("they are", "they're"), needs_next_word=True),
    Pair(("for example", "for instance")),
    Pair(("maybe", "perhaps")),
    Pair(("often", "frequently")),
    Pair(("usually", "typically")),
    Pair(("quickly", "rapidly")),
    Pair(("completely", "entirely")),
    Pair(("mostly", "largely")),
    Pair(("huge", "enormous")),
    Pair(("toward", "towards")),
    Pair(("among", "amongst")),
    Pair(("moreover", "furthermore")),
    Pair(("particularly", "especially")),
    Pair(("although", "even though")),
    Pair(("a lot of", "lots of"), not_after=frozenset({"quite", "such", "what", "rather"})),
    Pair(("kind of", "sort of"), not_after=_KIND),
    Pair(("kinds of", "sorts of")),
    Pair(("each other", "one another")),
    Pair(("anyone", "anybody")),
    Pair(("everyone", "everybody")),
    Pair(("someone", "somebody")),
    Pair(("no one", "nobody")),
    Pair(("first of all", "firstly")),
    Pair(("in the meantime", "meanwhile")),
    Pair(("nowadays", "these days"), not_after=frozenset({"of", "in", "on", "during", "for", "all"})),
    Pair(("afterward", "afterwards")),
    Pair(("percent", "per cent")),
)
# Every wording, lower-case with a straight apostrophe -> (pair index, variant index).
_TABLE: dict[str, tuple[int, int]] = {v.lower(): (p, i) for p, pair in enumerate(PAIRS) for i, v in enumerate(pair.variants)}
_TOKEN = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*|`+|.", re.DOTALL)
MAX_WORDS = 3  # the longest wording, in words
# Tokens after a word that decide whether it starts a carrier: the rest of the longest wording
# (" word" twice) and, for a contraction, the " word" after it.
_LOOKAHEAD = 2 * MAX_WORDS


def _norm(word: str) -> str:
    return word.lower().replace("\u2019", "'")


def _is_word(token: str) -> bool:
    return token[0].isascii() and token[0].isalpha()


def keyed_choice(key: bytes, pair: int, previous: str) -> int:
    """The variant the key picks for `pair` after the word `previous`: a fair keyed coin."""
    return hmac.new(key, f"{pair}\x00{previous}".encode(), hashlib.sha256).digest()[0] & 1


@dataclass(frozen=True)
class Carrier:
    pair: int
    previous: str  # the word before it, normalised ("" at the start)
    variant: int  # the wording found


@dataclass
class _Scan:
    """Where a left-to-right reading of one text stands: the previous word, and whether it is
    inside code. The same reader embeds and detects, so both see the same carriers."""

    previous: str = ""
    in_fence: bool = False
    in_inline: bool = False
    apostrophe: str = "'"

    def carrier_at(self, tokens: list[str], i: int) -> tuple[int, int, int] | None:
        """(pair, variant, index of its last token) when a carrier starts at word i."""
        if self.in_fence or self.in_inline:
            return None
        found, end = None, i
        words = [_norm(tokens[i])]
        while len(words) < MAX_WORDS and end + 2 < len(tokens) and tokens[end + 1] == " " and _is_word(tokens[end + 2]):
            end += 2
            words.append(_norm(tokens[end]))
        while found is None and words:  # the longest wording first
            found = _TABLE.get(" ".join(words))
            if found is None:
                words.pop()
                end -= 2
        if found is None:
            return None
        pair = PAIRS[found[0]]
        if self.previous in pair.not_after:
            return None
        if pair.needs_next_word and not (end + 2 < len(tokens) and tokens[end + 1] == " " and _is_word(tokens[end + 2])):
            return None
        return found[0], found[1], end

    def other(self, token: str) -> None:
        if token.startswith("`"):
            if len(token) >= 3 and not self.in_inline:
                self.in_fence = not self.in_fence
            elif not self.in_fence:
                self.in_inline = not self.in_inline
        elif token == "\n":
            self.in_inline = False

    def word(self, token: str) -> None:
        if "\u2019" in token:
            self.apostrophe = "\u2019"
        self.previous = _norm(token)


def _cased(original: str, variant: str, apostrophe: str) -> str:
    variant = variant.replace("'", apostrophe)
    if len(original) > 1 and original.isupper():
        return variant.upper()
    if original[:1].isupper():
        return variant[:1].upper() + variant[1:]
    return variant


def carriers(text: str) -> list[Carrier]:
    """Every carrier of a text, in order, with its context and the wording it uses."""
    tokens = _TOKEN.findall(text)
    scan = _Scan()
    out = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_word(token):
            scan.other(token)
            i += 1
            continue
        hit = scan.carrier_at(tokens, i)
        if hit is None:
            scan.word(token)
            i += 1
            continue
        pair, variant, end = hit
        out.append(Carrier(pair, scan.previous, variant))
        scan.word(tokens[end])
        i = end + 1
    return out


class Watermarker:
    """Embeds the mark of one key; one `TextWatermarker` per answer keeps the streaming state."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _rewrite(self, tokens: list[str], scan: _Scan, final: bool) -> tuple[str, int]:
        """The rewritten text of the tokens it can decide, and how many tokens that was."""
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not _is_word(token):
                scan.other(token)
                out.append(token)
                i += 1
                continue
            if not final and i + _LOOKAHEAD >= len(tokens):
                break  # the next words decide whether this one starts a carrier
            hit = scan.carrier_at(tokens, i)
            if hit is None:
                scan.word(token)
                out.append(token)
                i += 1
                continue
            pair, _, end = hit
            chosen = PAIRS[pair].variants[keyed_choice(self.key, pair, scan.previous)]
            if any("\u2019" in t for t in tokens[i : end + 1]):  # keep the answer's apostrophe style
                scan.apostrophe = "\u2019"
            text = _cased(tokens[i], chosen, scan.apostrophe)
            out.append(text)
            scan.previous = _norm(text.rsplit(" ", 1)[-1])
            i = end + 1
        return "".join(out), i

    def apply(self, text: str) -> str:
        """The whole text, watermarked."""
        marker = TextWatermarker(self)
        return marker.feed(text) + marker.flush()


@dataclass
class TextWatermarker:
    """The watermark of one answer's text, fed whole or in pieces (one per choice index)."""

    marker: Watermarker
    _held: dict[int, str] = field(default_factory=dict)
    _scans: dict[int, _Scan] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: WatermarkSettings) -> "TextWatermarker":
        if settings.secret is None:
            raise ValueError("watermark: no secret")
        return cls(Watermarker(settings.secret.get_secret_value().encode()))

    def feed(self, text: str, index: int = 0) -> str:
        """The part of (held text + `text`) that is decided; the rest waits for more."""
        held = self._held.get(index, "") + text
        # Words before the last whitespace are complete; the tokens after it may still grow.
        cut = max(held.rfind(" "), held.rfind("\n"), held.rfind("\t")) + 1
        tokens = _TOKEN.findall(held[:cut])
        out, used = self.marker._rewrite(tokens, self._scans.setdefault(index, _Scan()), final=False)
        self._held[index] = "".join(tokens[used:]) + held[cut:]
        return out

    def flush(self, index: int = 0) -> str:
        """The rest of the answer's text, at its end."""
        held = self._held.pop(index, "")
        out, _ = self.marker._rewrite(_TOKEN.findall(held), self._scans.pop(index, _Scan()), final=True)
        return out

    def pending(self) -> list[int]:
        return [i for i, h in self._held.items() if h]


@dataclass(frozen=True)
class Detection:
    carriers: int  # distinct (pair, previous word) places read
    hits: int  # of those, how many use the key's wording
    z: float
    p_value: float  # P(hits this high | text not marked with this key)


def binomial_tail(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) >= k), summed term by term in log space (relative error ~1e-12, no
    normal approximation, which is far off in the 1e-6 tail of small samples)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    base = math.lgamma(n + 1) - n * math.log(2)
    total = 0.0
    for j in range(k, n + 1):
        term = math.exp(base - math.lgamma(j + 1) - math.lgamma(n - j + 1))
        total += term
        if 2 * j > n and term < total * 1e-17:  # past the mode the terms only shrink
            break
    return min(total, 1.0)


def distinct_carriers(texts: Iterable[str]) -> list[Carrier]:
    """The carriers of a corpus, each (pair, previous word) once: the first one seen. A
    repeated phrase is one keyed coin, however often it is repeated."""
    seen: dict[tuple[int, str], Carrier] = {}
    for text in texts:
        for c in carriers(text):
            seen.setdefault((c.pair, c.previous), c)
    return list(seen.values())


def score(found: list[Carrier], key: bytes) -> Detection:
    """The test of one key on a corpus' distinct carriers."""
    n = len(found)
    hits = sum(c.variant == keyed_choice(key, c.pair, c.previous) for c in found)
    z = (hits - n / 2) / math.sqrt(n / 4) if n else 0.0
    return Detection(n, hits, z, binomial_tail(n, hits))


def detect(texts: Iterable[str], key: bytes) -> Detection:
    """Test a suspect corpus for the key's mark."""
    return score(distinct_carriers(texts), key)
