"""The scoring path's fast paths equal the plain computations they replace, bit for bit, on the
edge cases where a shortcut could go wrong: a cached text sketch against computing it, a row
read from contiguous bytes against numpy's strided copy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import TEXT_LIMIT, WINDOW
from moat.models.scope_window import _META_FROM, ROW, ScopeState, row_meta
from moat.models.summary import SKETCHES, SketchCache, Summary, newest_text, summarize, text_sketch


def chat(text: str, rid: str = "r") -> Event:
    return Event.model_validate({"request_id": rid, "ts": 1.0, "account_id": "a", "messages": [{"role": "user", "content": text}]})


def assert_same_summary(got: Summary, want: Summary) -> None:
    for f in dataclasses.fields(Summary):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f.name
        else:
            assert a == b, f.name


# (case, texts summarised in order through one cache): hits, misses and keys that must not collide.
TEXTS = [
    ("empty text", ["", ""]),
    ("punctuation only: no words", ["?!", "?!"]),
    ("a repeat is a hit", ["What is 2 + 2?", "What is 2 + 2?"]),
    ("case differs: distinct texts", ["Hello World", "hello world"]),
    ("non-ASCII and digits", ["Prix: 12,50 € pour 3 cafés", "Prix: 12,50 € pour 3 cafés"]),
    ("lone surrogates differ only there", ["a \ud800 b", "a \udc00 b", "a \ud800 b"]),
    ("longer than the word scan", [" ".join(f"w{i}" for i in range(3000))] * 2),
    ("equal up to TEXT_LIMIT: one sketch", ["x " * TEXT_LIMIT + "tail one", "x " * TEXT_LIMIT + "tail two"]),
    ("repeated words collide in the bloom", ["the cat the cat the cat the end"] * 2),
]


@pytest.mark.parametrize("case, texts", TEXTS, ids=[c[0] for c in TEXTS])
def test_cached_sketch_equals_computing_it(case: str, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for i, text in enumerate(texts):
        event = chat(text, f"r{i}")
        monkeypatch.setattr("moat.models.summary.SKETCHES", SketchCache(size=0))  # nothing kept: computed
        want = summarize(event)
        monkeypatch.setattr("moat.models.summary.SKETCHES", SKETCHES)
        assert_same_summary(summarize(event), want)


def test_cache_evicts_least_recently_used_and_shares_read_only_arrays() -> None:
    cache = SketchCache(size=2)
    a, b, c = (cache.get(t) for t in ("alpha beta", "gamma delta", "epsilon"))
    assert cache.get("epsilon") is c and cache.get("alpha beta") is not a  # "alpha beta" was evicted
    assert cache.get("gamma delta") is not b
    for arr in (c.tokens, c.buckets, c.bloom_mask):
        with pytest.raises(ValueError):
            arr[0] = 1  # shared by every summary of the text
    fresh = text_sketch("alpha beta")
    got = cache.get("alpha beta")
    assert [x.tobytes() if isinstance(x, np.ndarray) else x for x in got] == [x.tobytes() if isinstance(x, np.ndarray) else x for x in fresh]


def test_sketch_reads_the_newest_text_cut_to_the_limit() -> None:
    e = chat("y" * (TEXT_LIMIT + 10))
    assert newest_text(e)[0][:TEXT_LIMIT] == "y" * TEXT_LIMIT
    assert summarize(e).prompt_hash == text_sketch("y" * TEXT_LIMIT).prompt_hash


def random_rows(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(k, dtype=ROW)
    rows.view(np.uint8)[:] = rng.integers(0, 256, k * ROW.itemsize, dtype=np.uint8)
    return rows


# (case, rows held, capacity): empty, partial, full window, spare capacity past n.
SHAPES = [("no rows", 0, 1), ("one row", 1, 1), ("three of four", 3, 4), ("full window", WINDOW, WINDOW), ("half of a full buffer", WINDOW // 2, WINDOW)]


@pytest.mark.parametrize("case, n, capacity", SHAPES, ids=[c[0] for c in SHAPES])
def test_row_meta_equals_the_strided_copy(case: str, n: int, capacity: int) -> None:
    state = ScopeState(rows=random_rows(capacity, n), n=n)
    strided = state.rows.view(np.uint8).reshape(-1, ROW.itemsize)[:n, _META_FROM:].tobytes()
    assert row_meta(state) == strided
