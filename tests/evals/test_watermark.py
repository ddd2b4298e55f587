"""The watermark detector and its evaluation: a marked corpus is found with the key, and only
with it; unmarked text and wrong keys give p-values that behave like p-values."""

from __future__ import annotations

import math
import random

import pytest

from moat.evals import watermark as ev
from moat.serving.actions.watermark import Watermarker, binomial_tail, detect, distinct_carriers, score

KEY = b"detector-test-key-0123456789abcd"
TEXTS = ev.synthetic_answers(120, seed=3)
MARKED = [Watermarker(KEY).apply(t) for t in TEXTS]


@pytest.mark.parametrize("n, k", [(10, 10), (10, 0), (10, 11), (4, 2), (20, 15), (1, 1), (200, 100), (2000, 1125), (2000, 900), (5000, 2700)])
def test_binomial_tail_matches_the_exact_sum(n: int, k: int) -> None:
    exact = sum(math.comb(n, j) for j in range(max(k, 0), n + 1)) / 2**n
    assert binomial_tail(n, k) == pytest.approx(exact, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    "texts, key, detected",
    [
        (MARKED, KEY, True),
        (TEXTS, KEY, False),  # the same answers, unmarked
        (MARKED, b"another-key-0123456789abcdefghij", False),
    ],
    ids=["marked, key", "unmarked, key", "marked, wrong key"],
)
def test_detect_finds_the_key_and_only_the_key(texts: list[str], key: bytes, detected: bool) -> None:
    d = detect(texts, key)
    assert d.carriers >= 40  # distinct (pair, previous word) places: enough for a verdict
    assert (d.p_value < ev.TARGET_P) == detected
    if detected:
        assert d.hits == d.carriers and d.z > 4.75
    else:
        assert d.p_value > 1e-3


def test_repeated_phrases_count_once() -> None:
    # A copier who repeats one marked sentence a thousand times holds one piece of evidence.
    one = Watermarker(KEY).apply("I do not know, for example, why they are often late.")
    assert detect([one] * 1000, KEY).carriers == detect([one], KEY).carriers == 4


def test_wrong_keys_reject_at_their_nominal_rate() -> None:
    rng = random.Random(0)
    found = distinct_carriers(MARKED)
    ps = [score(found, rng.randbytes(32)).p_value for _ in range(300)]
    assert sum(p < 0.05 for p in ps) <= 0.05 * len(ps) + 3 * math.sqrt(0.05 * 0.95 * len(ps))
    assert min(ps) > ev.TARGET_P


@pytest.mark.parametrize("q, survives", [(0.0, True), (0.1, True), (1.0, False)])
def test_word_drops_weaken_but_do_not_remove_the_mark(q: float, survives: bool) -> None:
    dropped = [ev.drop_words(t, q, random.Random(1)) for t in MARKED]
    assert (detect(dropped, KEY).p_value < ev.TARGET_P) == survives


def test_canonicalising_every_pair_removes_the_mark() -> None:
    # The pair list is public: an attacker who writes every pair one way erases the mark.
    assert detect([ev.canonicalize(t) for t in MARKED], KEY).p_value > 1e-3


def test_words_to_detect_counts_whole_answers_until_the_target() -> None:
    words = ev.words_to_detect(MARKED, KEY)
    assert words is not None
    # Stopping one answer earlier must still be above the target.
    count, before = 0, []
    for t in MARKED:
        if count + ev.words(t) >= words:
            break
        before.append(t)
        count += ev.words(t)
    assert count + ev.words(MARKED[len(before)]) == words
    assert detect(before, KEY).p_value >= ev.TARGET_P
    assert ev.words_to_detect(TEXTS, KEY) is None


def test_read_answers_takes_distinct_long_assistant_turns(tmp_path) -> None:
    import json

    long = " ".join(["word"] * ev.MIN_WORDS)
    events = [
        {"messages": [{"role": "user", "content": long + " q"}, {"role": "assistant", "content": long + " a"}]},
        {"messages": [{"role": "assistant", "content": long + " a"}, {"role": "assistant", "content": "too short"}]},
        {"prompt": "no messages"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    assert ev.read_answers([path]) == [long + " a"]


def test_main_prints_the_tables(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert ev.main(["--corpus", str(tmp_path / "absent.jsonl"), "--shuffles", "2", "--keys", "3"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "p<1e-6" in out and "canonicalised" in out
