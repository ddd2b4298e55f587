"""Detection power of the keyed text watermark (moat.serving.actions.watermark).

The text is real model answers: the assistant turns of the external dev trace
(../shared/data/external/dev-spread.jsonl.gz, read in place), or, when that file is absent, a
synthetic stand-in (flagged in the output). Each answer is watermarked the way `moat proxy`
does on `perturb`, and the detector is run on what a copier would hold:
- power: how many words of marked text (answers in random order) it takes to reach
  p < 1e-6 with the key;
- false positives: p-values with the key on the unmarked answers, and with wrong keys on the
  marked ones, in chunks of that size; a sound test gives p < alpha at rate alpha at most;
- light paraphrase: each word dropped with probability q, then the same measures;
- an attacker who knows the pair list and writes every pair one way (the list is public, so
  this removes the mark: shown so nobody relies on it against a determined copier).

Run: python -m moat.evals.watermark [--corpus PATH ...] [--shuffles 20] [--keys 200]"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from moat.serving.actions.watermark import PAIRS, Watermarker, binomial_tail, carriers, detect, distinct_carriers, keyed_choice, score

KEY = b"evaluation-watermark-key-0001"
TARGET_P = 1e-6
DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external" / "dev-spread.jsonl.gz"
MIN_WORDS = 20  # answers shorter than this (labels, one-word replies) carry almost nothing


def read_answers(paths: Iterable[Path]) -> list[str]:
    """Distinct assistant turns of contract traces, in first-seen order."""
    seen: dict[str, None] = {}
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                for m in json.loads(line).get("messages") or []:
                    if m.get("role") == "assistant" and isinstance(m.get("content"), str) and len(m["content"].split()) >= MIN_WORDS:
                        seen.setdefault(m["content"], None)
    return list(seen)


_SYNTH = [
    "You do not need to restart the service; it is usually enough to reload the configuration.",
    "For example, if the file is huge, you can't read it at once, so read it in chunks.",
    "They are often surprised that the test does not fail when the input is empty.",
    "Maybe the simplest fix is to move the check toward the start of the function.",
    "We are mostly interested in the cases that were not covered, particularly the slow ones.",
    "I am fairly sure the answer is 42, but you should verify it among the other results.",
    "Moreover, the cache will not help if the keys are completely random.",
    "The library is quickly becoming the default, and it doesn't require any setup.",
    "You are right that the second approach is typically faster on small inputs.",
    "The results were not what we expected, and the model could not explain them.",
]


def synthetic_answers(n: int, seed: int = 0) -> list[str]:
    """A stand-in corpus when the real answers are not there: sentences of assistant prose in
    random combinations (their carrier density is higher than real text's: figures from it
    are flagged as synthetic)."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(_SYNTH, 5)) for _ in range(n)]


def drop_words(text: str, q: float, rng: random.Random) -> str:
    """Light paraphrase: each word dropped with probability q."""
    return " ".join(w for w in text.split(" ") if rng.random() >= q)


def canonicalize(text: str) -> str:
    """What an attacker who knows PAIRS does: every pair written as its first wording."""
    out = text
    for pair in PAIRS:
        first, second = pair.variants
        out = re.sub(rf"\b{re.escape(second)}\b", first, out, flags=re.IGNORECASE)
        out = re.sub(rf"\b{re.escape(second.replace(chr(39), chr(8217)))}\b", first, out, flags=re.IGNORECASE)
    return out


def words(text: str) -> int:
    return len(text.split())


def words_to_detect(texts: list[str], key: bytes, target: float = TARGET_P) -> int | None:
    """Words of `texts`, read in order, until the detector's p-value falls below `target`."""
    seen: set[tuple[int, str]] = set()
    n = hits = total = 0
    for text in texts:
        for c in carriers(text):
            if (c.pair, c.previous) in seen:
                continue
            seen.add((c.pair, c.previous))
            n += 1
            hits += c.variant == keyed_choice(key, c.pair, c.previous)
        total += words(text)
        if binomial_tail(n, hits) < target:
            return total
    return None


def chunks(texts: list[str], size_words: int) -> list[list[str]]:
    """Consecutive answers grouped into corpora of about `size_words` words each."""
    out: list[list[str]] = [[]]
    count = 0
    for text in texts:
        out[-1].append(text)
        count += words(text)
        if count >= size_words:
            out.append([])
            count = 0
    return [c for c in out if c]


@dataclass(frozen=True)
class Power:
    name: str
    hit_rate: float  # share of carriers in the key's wording
    carriers_per_100_words: float
    median_words: float | None  # to p < 1e-6, over shuffles; None: never reached
    p90_words: float | None
    reached: float  # share of shuffles that reached p < 1e-6 within the corpus


def power(name: str, texts: list[str], key: bytes, shuffles: int, rng: random.Random) -> Power:
    whole = detect(texts, key)
    total_words = sum(words(t) for t in texts)
    needed = []
    for _ in range(shuffles):
        order = texts[:]
        rng.shuffle(order)
        needed.append(words_to_detect(order, key))
    reached = sorted(w for w in needed if w is not None)

    def quantile(q: float) -> float | None:
        if len(reached) < len(needed) * q:
            return None
        return float(reached[min(len(reached) - 1, int(q * len(needed)))])

    return Power(name, whole.hits / max(whole.carriers, 1), 100 * sum(len(carriers(t)) for t in texts) / max(total_words, 1), quantile(0.5), quantile(0.9), len(reached) / len(needed))


@dataclass(frozen=True)
class FalsePositives:
    name: str
    trials: int
    at_1e2: float  # share of trials with p < 0.01
    at_1e3: float
    at_target: float  # p < 1e-6
    smallest_p: float


def false_positives(name: str, corpora: list[list[str]], keys: list[bytes]) -> FalsePositives:
    found = [distinct_carriers(corpus) for corpus in corpora]
    ps = [score(f, key).p_value for key in keys for f in found]
    return FalsePositives(name, len(ps), sum(p < 1e-2 for p in ps) / len(ps), sum(p < 1e-3 for p in ps) / len(ps), sum(p < TARGET_P for p in ps) / len(ps), min(ps))


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, nargs="*", default=[DEFAULT_CORPUS], help="contract traces (.jsonl or .jsonl.gz) whose assistant turns are the text")
    ap.add_argument("--shuffles", type=int, default=20, help="random orders of the answers for the words-to-detect figures")
    ap.add_argument("--keys", type=int, default=200, help="random keys for the false-positive figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    present = [p for p in args.corpus if p.exists()]
    if present:
        texts, source = read_answers(present), ", ".join(str(p) for p in present)
    else:
        texts, source = synthetic_answers(400, args.seed), "SYNTHETIC stand-in (no corpus found)"
    marker = Watermarker(KEY)
    marked = [marker.apply(t) for t in texts]
    changed = sum(a != b for a, b in zip(texts, marked))
    print(f"corpus: {source}: {len(texts)} answers of {MIN_WORDS}+ words, {sum(map(words, texts)):,} words; the mark changed the wording of {changed} ({changed / len(texts):.0%})")

    rows = [power("marked", marked, KEY, args.shuffles, rng)]
    for q in (0.05, 0.1, 0.2):
        rows.append(power(f"marked, {q:.0%} of words dropped", [drop_words(t, q, rng) for t in marked], KEY, args.shuffles, rng))
    rows.append(power("marked, every pair canonicalised", [canonicalize(t) for t in marked], KEY, args.shuffles, rng))
    print(f"\npower: words of suspect text to reach p < {TARGET_P:g} with the key ({args.shuffles} random orders)")
    print(f"{'suspect text':36s} {'hit rate':>8s} {'carriers/100 words':>19s} {'median words':>13s} {'p90 words':>10s} {'reached':>8s}")
    for r in rows:
        print(f"{r.name:36s} {r.hit_rate:8.1%} {r.carriers_per_100_words:19.2f} {_fmt(r.median_words):>13s} {_fmt(r.p90_words):>10s} {r.reached:8.0%}")

    size = int(rows[0].median_words or 2000)
    keys = [rng.randbytes(32) for _ in range(args.keys)]
    fp = [
        false_positives("unmarked text, the key", chunks(texts, size), [KEY]),
        false_positives("unmarked text, random keys", chunks(texts, size), keys),
        false_positives("marked text, wrong keys", chunks(marked, size), keys),
    ]
    print(f"\nfalse positives: corpora of about {size:,} words (the median above)")
    print(f"{'case':32s} {'trials':>7s} {'p<0.01':>7s} {'p<0.001':>8s} {'p<1e-6':>7s} {'smallest p':>11s}")
    for f in fp:
        print(f"{f.name:32s} {f.trials:7d} {f.at_1e2:7.2%} {f.at_1e3:8.2%} {f.at_target:7.2%} {f.smallest_p:11.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
