"""The scoring path's fast paths equal the plain computations they replace, bit for bit, on the
edge cases where a shortcut could go wrong: a cached text sketch against computing it, a row
read from contiguous bytes against numpy's strided copy, the compiled (numba) kernels against
their Python references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import BLOOM_WORDS, GRAM_WORDS, N_OWN, N_TOKENS, TEXT_LIMIT, WINDOW
from moat.models.row import TAIL_FROM
from moat.models.scope_window import ROW, Crowd, ScopeState, push, push_reference, relational, relational_reference, row_meta
from moat.models.summary import SKETCHES, SketchCache, Summary, TextSketch, newest_text, summarize, text_sketch, text_sketch_reference
from moat.models.text_kernel import ascii_kernel, gram_kernel
from moat.models.window_kernel import push_kernel, relational_kernel


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
    strided = state.rows.view(np.uint8).reshape(-1, ROW.itemsize)[:n, TAIL_FROM:].tobytes()
    assert row_meta(state) == strided


def random_summary(rng: np.random.Generator, ts: float, *, pool: int, lb_pool: int, words: int, high_simhash: bool) -> Summary:
    """A request with fingerprints drawn from small pools, so that rows repeat each other."""
    own = rng.random(N_OWN, dtype=np.float32)
    buckets = np.unique(rng.integers(0, BLOOM_WORDS * 64, words)).astype(np.intp)
    mask = np.zeros(BLOOM_WORDS * 64, dtype=np.uint8)
    mask[buckets] = 1
    # Near duplicates: a SimHash from the pool with a few bits flipped, about the 6-bit bar.
    simhash = (int(rng.integers(1, pool + 1)) * 0x9E3779B97F4A7C15) % (1 << 62)
    for bit in rng.integers(0, 62, int(rng.integers(0, 9))):
        simhash ^= 1 << int(bit)
    top = 1 << 63 if high_simhash else 0
    lb = int(rng.integers(0, lb_pool + 1))
    return Summary(
        ts=ts, account_id="a", api_key_id=None, ip_prefix=None, own=own, tokens=np.zeros(N_TOKENS, dtype=np.uint16), buckets=buckets,
        bloom_mask=np.packbits(mask, bitorder="little").view(np.uint64), simhash=top | simhash, shape=int(rng.integers(1, pool + 1)),
        prompt_hash=int(rng.integers(1, pool + 1)), lb_hash=lb, param_hash=int(rng.integers(1, pool + 1)), client_fp=1, logprobs=bool(rng.integers(2)),
        has_lb=lb != 0, own_values=tuple(own.tolist()),
    )  # fmt: skip


# (case, rows pushed before the request, gaps in seconds, fingerprint pool, logit-bias pool,
# words, SimHash top bit, campaign and cohort): each exercises one statistic's edge.
HISTORIES = [
    ("one row before", 1, [5.0], 4, 0, 20, False, (1, 1)),
    ("a full window", WINDOW + 3, [1.0, 30.0, 0.5], 6, 0, 40, False, (1, 1)),
    ("rotated novelty bloom (80 rows)", 80, [2.0, 7.0], 50, 0, 60, False, (1, 1)),
    ("equal timestamps: no gap", 9, [0.0], 3, 0, 10, False, (1, 1)),
    ("the request is earlier than the last row", 4, [100.0], 3, 0, 10, False, (1, 1)),
    ("a day between requests", 6, [86400.0 * 3, 1.0], 3, 0, 10, False, (1, 1)),
    ("one prompt with many logit biases", 12, [1.0], 1, 5, 10, False, (1, 1)),
    ("no words: no novelty", 5, [3.0], 3, 0, 0, False, (1, 1)),
    ("SimHash top bit set", 7, [2.0], 3, 0, 10, True, (1, 1)),
    ("a crowd: campaign and cohort counts", 3, [60.0, 61.0], 3, 2, 10, False, (250, 7)),
]


@pytest.mark.skipif(relational_kernel is None, reason="numba is not installed: only the reference runs")
@pytest.mark.parametrize("case, n, gaps, pool, lb_pool, words, high, crowd", HISTORIES, ids=[c[0] for c in HISTORIES])
def test_compiled_window_statistics_equal_the_reference(case: str, n: int, gaps: list[float], pool: int, lb_pool: int, words: int, high: bool, crowd: tuple[int, int]) -> None:
    rng = np.random.default_rng(n)
    state = ScopeState()
    ts = 1_700_000_000.0
    for i in range(n):
        s = random_summary(rng, ts, pool=pool, lb_pool=lb_pool, words=words, high_simhash=high)
        push(state, s, relational_reference(state, s, Crowd(*crowd), "account"))
        ts += gaps[i % len(gaps)]
    if case.startswith("the request is earlier"):
        ts -= 250.0
    for scope in ("account", "api_key", "ip_prefix"):
        s = random_summary(rng, ts, pool=pool, lb_pool=lb_pool, words=words, high_simhash=high)
        want = relational_reference(state, s, Crowd(*crowd), scope)
        assert relational(state, s, Crowd(*crowd), scope).tobytes() == want.tobytes()
        assert relational(state, s, Crowd(*crowd), scope, row_meta(state)).tobytes() == want.tobytes()


# (case, text): where a compiled word split, CRC or bit count could part from the reference.
SKETCH_TEXTS = [
    ("empty", ""),
    ("punctuation only: no words", "?! -- ..."),
    ("one word", "hello"),
    ("non-ASCII words (multi-byte UTF-8)", "Prix: 12,50 € pour 3 cafés, 東京の天気は? Привет мир"),
    ("lone surrogate", "a \ud800 b"),
    ("digits only", "0123456789 42 7"),
    ("case folding that changes byte length", "İstanbul ẞtraße ǅemal"),
    ("exactly GRAM_WORDS words", " ".join(f"w{i}" for i in range(GRAM_WORDS))),
    ("many words: grams stop at GRAM_WORDS, tokens at 256", " ".join(f"word{i % 97}" for i in range(3000))),
    ("40k characters of one word", "x" * 40_000),
    ("40k characters, pasted document", ("Lorem ipsum dolor sit amet, 12 consectetur. " * 1000)[:40_000]),
    ("repeated words collide in the bloom", "the cat the cat the cat the end"),
    ("ASCII: underscores, apostrophes, tabs and newlines", "snake_case __init__ don't\tstop\nNOW_1 x_"),
    ("ASCII: the shape masks numbers and names", "Alice 42 bob 7x Q 2024 tail words"),
    ("ASCII: control characters only", "\x00\x01\x1f\x7f"),
    ("ASCII: digits past the counted head", "a" * 1020 + " 123456789 9"),
]


@pytest.mark.skipif(gram_kernel is None or ascii_kernel is None, reason="numba is not installed: only the reference runs")
@pytest.mark.parametrize("case, text", SKETCH_TEXTS, ids=[c[0] for c in SKETCH_TEXTS])
def test_compiled_text_sketch_equals_the_reference(case: str, text: str) -> None:
    got, want = text_sketch(text[:TEXT_LIMIT]), text_sketch_reference(text[:TEXT_LIMIT])
    for name, a, b in zip(TextSketch._fields, got, want):
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() and not a.flags.writeable, name
        else:
            assert type(a) is type(b) and a == b, name


def state_bytes(state: ScopeState) -> tuple:
    prev = state.bloom_prev.tobytes() if state.bloom_prev is not None else None
    return (state.rows[: state.n].tobytes(), state.n, state.total, state.ewma_1h, state.ewma_1d, state.bloom_cur.tobytes(), prev, state.bloom_count)


@pytest.mark.skipif(push_kernel is None, reason="numba is not installed: only the reference runs")
@pytest.mark.parametrize("case, n, gaps, pool, lb_pool, words, high, crowd", HISTORIES, ids=[c[0] for c in HISTORIES])
def test_compiled_push_equals_the_reference(case: str, n: int, gaps: list[float], pool: int, lb_pool: int, words: int, high: bool, crowd: tuple[int, int]) -> None:
    """Every push, through the buffer's growth (1, 2, 4, 8, 16 rows), the shift of a full
    window and the bloom's rotation, leaves the same state and returns the same window."""
    rng = np.random.default_rng(n)
    compiled, reference = ScopeState(), ScopeState()
    ts = 1_700_000_000.0
    for i in range(n + 1):
        if i == n and case.startswith("the request is earlier"):
            ts -= 250.0  # stored at its own time here; the stores keep the clock monotonic
        s = random_summary(rng, ts, pool=pool, lb_pool=lb_pool, words=words, high_simhash=high)
        vec = relational_reference(reference, s, Crowd(*crowd), "account")
        got, want = push(compiled, s, vec), push_reference(reference, s, vec)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert state_bytes(compiled) == state_bytes(reference)
        ts += gaps[i % len(gaps)]


@pytest.mark.skipif(gram_kernel is None or ascii_kernel is None, reason="numba is not installed: only the reference runs")
def test_compiled_text_sketch_equals_the_reference_on_random_ascii() -> None:
    """Every ASCII character in every position of a word, the shape's first words included."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        codes = rng.integers(0, 128, int(rng.integers(0, 400)))
        text = "".join(map(chr, codes.tolist()))
        got, want = text_sketch(text), text_sketch_reference(text)
        assert [x.tobytes() if isinstance(x, np.ndarray) else x for x in got] == [x.tobytes() if isinstance(x, np.ndarray) else x for x in want], text
