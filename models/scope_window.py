"""A scope's windowed state and the relational features of a request against it.

`window(state, summary, crowd, scope)` computes the request's relational features against the
scope's history (time gaps, similarity, novelty, repetition, parameter changes), appends the
request to the scope's bounded history and returns the latest WINDOW per-request vectors, which
is what the sequence model reads.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from moat.models.feature_spec import BLOOM_ROTATE, BLOOM_WORDS, FEATURES, FIRST_REQUEST_ONES, INDEX, N_FEATURES, N_OWN, N_TOKENS, SCOPE_FLAG_COLUMNS, SCOPE_INDEX, SPEC, WINDOW
from moat.models.row import ROW, ROW_TAIL, TAIL_FROM
from moat.models.summary import Summary
from moat.models.window_kernel import push_kernel, relational_kernel

# Encoders of the relational features, from first_in_scope to cohort (FEATURES order).
_RELATIONAL = [f.scale.encode for f in FEATURES[INDEX["first_in_scope"] : INDEX["cohort"] + 1]]
# A vector is [request features][relational features][scope flags], built in that order.
_REL_END = min(SCOPE_FLAG_COLUMNS)
if not (INDEX["first_in_scope"] == N_OWN and SCOPE_FLAG_COLUMNS == list(range(_REL_END, N_FEATURES)) and len(_RELATIONAL) == _REL_END - N_OWN):
    raise RuntimeError("scope_window: FEATURES must be request, relational (each with an encoder in _RELATIONAL), then scope-flag features")
_SCOPE_FLAGS = {sc: [float(i == SCOPE_INDEX[sc]) for i in SCOPE_FLAG_COLUMNS] for sc in SCOPE_INDEX}
# A scope's first request: the relational features that are 1 with no history, the rest 0 until set.
_FIRST_RELATIONAL = [float(i in FIRST_REQUEST_ONES) for i in range(N_OWN, _REL_END)]
# The relational encoders that change a value. Flags and shares encode as `float`, and every raw
# value `relational` gives them is a float or a bool, which the vector's float32 conversion
# reads exactly as it reads float(value): calling `float` on 12 of 22 values was pure overhead.
_CHANGING = [(i, encode) for i, encode in enumerate(_RELATIONAL) if encode is not float]
_R_RATE_1M, _R_RATE_1H, _R_RATE_1D, _R_TOTAL, _R_CAMPAIGN, _R_COHORT, _R_LB_SHARE, _R_LOGPROB_SHARE = (
    INDEX[n] - N_OWN for n in ("rate_1m", "rate_1h", "rate_1d", "total", "campaign", "cohort", "lb_share", "logprob_share")
)
_ONE_RATE = SPEC["rate_1m"].scale(1), SPEC["rate_1h"].scale(1), SPEC["rate_1d"].scale(1)
_TOTAL, _CAMPAIGN, _COHORT = SPEC["total"].scale.encode, SPEC["campaign"].scale.encode, SPEC["cohort"].scale.encode
# A stored row from its tokens on (`row_meta`): tokens (skipped), ts, simhash, shape, prompt, lb,
# param, flags; and k such rows in one format, which unpacks faster than k single rows.
_META = struct.Struct(f"<{2 * N_TOKENS}xdQIIIIB")
_META_ROWS = [struct.Struct("<" + _META.format[1:] * k) for k in range(WINDOW + 1)]
_PARAM_CHANGE = INDEX["param_change"]


@dataclass(slots=True)
class ScopeState:
    """A scope's bounded history: the latest WINDOW rows plus O(1) running aggregates.

    Rows are stored with the capacity they need (grown by doubling up to WINDOW), so a scope
    that has sent three requests costs a few hundred bytes, not a full window.
    """

    rows: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=ROW))
    n: int = 0
    total: int = 0
    ewma_1h: float = 0.0
    ewma_1d: float = 0.0
    bloom_cur: np.ndarray = field(default_factory=lambda: np.zeros(BLOOM_WORDS, dtype=np.uint64))
    # The previous novelty generation exists only once a scope has rotated (64+ requests):
    # most scopes never get there, and this keeps them small.
    bloom_prev: np.ndarray | None = None
    bloom_count: int = 0

    @property
    def last_ts(self) -> float | None:
        return float(self.rows["ts"][self.n - 1]) if self.n else None

    def history(self) -> np.ndarray:
        return self.rows[: self.n]

    def reserve(self) -> None:
        """Room for one more row, unless a full window is held (the next row shifts one out)."""
        if self.n == len(self.rows) < WINDOW:
            grown = np.zeros(min(2 * len(self.rows), WINDOW), dtype=ROW)
            grown[: self.n] = self.rows
            self.rows = grown

    def append(self, row: tuple) -> None:
        self.reserve()
        if self.n == len(self.rows):
            # Shift by one row as raw bytes: a structured-array slice copy with sub-array
            # fields takes numpy's slow path and cost more than the rest of the request.
            raw = self.rows.view(np.uint8)
            raw[: -ROW.itemsize] = raw[ROW.itemsize :]
            self.n -= 1
        self.rows[self.n] = row
        self.n += 1

    def copy(self, scope: str | None = None) -> ScopeState:
        """A copy a caller may change without touching this state; with `scope`, its stored
        vectors carry that scope's flag (a key or address block taking its own copy of the
        account history it shared)."""
        rows = self.rows.copy()
        if scope is not None:
            rows["vec"][: self.n, _REL_END:] = _FLAG_TAILS[scope]
        prev = self.bloom_prev
        # Every field by name: dataclasses.replace costs several times this on the request path.
        return ScopeState(
            rows=rows, n=self.n, total=self.total, ewma_1h=self.ewma_1h, ewma_1d=self.ewma_1d, bloom_cur=self.bloom_cur.copy(),
            bloom_prev=None if prev is None else prev.copy(), bloom_count=self.bloom_count,
        )

    def nbytes(self) -> int:
        return self.rows.nbytes + self.bloom_cur.nbytes + (self.bloom_prev.nbytes if self.bloom_prev is not None else 0) + 8 * 8


class Crowd(NamedTuple):
    """What the request's cross-account sketches say, the same for every scope of the request:
    distinct accounts (this one included) in the last hour that sent its prompt template
    (`campaign`) and its exact client fingerprint (`cohort`). A named tuple, as the featurizer's
    other per-request records: a frozen dataclass's __init__ costs about 2 us, a tuple's 0.5."""

    campaign: int = 1
    cohort: int = 1


def relational(state: ScopeState, s: Summary, crowd: Crowd, scope: str, meta: bytes | None = None) -> np.ndarray:
    """The full feature vector of request `s` against the scope's history (state unchanged):
    compiled (`window_kernel`) where numba is installed, else `relational_reference`, which it
    equals bit for bit. `meta` is `row_meta(state)` when the caller already holds it."""
    if relational_kernel is None or state.n == 0:
        return relational_reference(state, s, crowd, scope, meta)
    rows = np.frombuffer(row_meta(state) if meta is None else meta, dtype=ROW_TAIL)
    # Not rotated yet: OR-ing the current bloom with itself reads it alone.
    prev = state.bloom_cur if state.bloom_prev is None else state.bloom_prev
    return relational_kernel(
        rows, s.ts, s.simhash, s.prompt_hash, s.shape, s.param_hash, s.lb_hash, s.has_lb, s.logprobs, s.buckets,
        state.bloom_cur, prev, state.total, state.ewma_1h, state.ewma_1d, crowd.campaign, crowd.cohort, s.own, _FLAG_TAILS[scope],
    )  # fmt: skip


def relational_reference(state: ScopeState, s: Summary, crowd: Crowd, scope: str, meta: bytes | None = None) -> np.ndarray:
    """`relational` in Python: the definition the compiled kernel is checked against.

    This runs once per scope for every request served, over at most WINDOW rows. At that size
    a numpy call on a strided field costs more than a Python pass over lists, so the stored
    rows' fields are unpacked once from their bytes (`meta`: `row_meta(state)`, which the
    caller may already hold) and the window statistics are plain Python. The vector is built
    as one list: a numpy store per feature cost more than the arithmetic."""
    k = state.n
    if k == 0:
        rel = list(_FIRST_RELATIONAL)
        # This request is the only one in the window and in the rates.
        rel[_R_RATE_1M], rel[_R_RATE_1H], rel[_R_RATE_1D] = _ONE_RATE
        rel[_R_TOTAL] = _TOTAL(state.total + 1)
        rel[_R_CAMPAIGN] = _CAMPAIGN(max(crowd.campaign - 1, 0))
        rel[_R_COHORT] = _COHORT(max(crowd.cohort - 1, 0))
        rel[_R_LB_SHARE] = float(s.has_lb)
        rel[_R_LOGPROB_SHARE] = float(s.logprobs)
        return np.array([*s.own_values, *rel, *_SCOPE_FLAGS[scope]], dtype=np.float32)
    # The stored rows' fields, each as a tuple over the window (oldest first).
    u = _META_ROWS[k].unpack(row_meta(state) if meta is None else meta)
    ts, simhashes, shapes, prompts, lbs, params, flags = u[0::7], u[1::7], u[2::7], u[3::7], u[4::7], u[5::7], u[6::7]
    dt = max(s.ts - ts[-1], 0.0)
    first8 = ts[-8] if k >= 8 else ts[0]
    gap_cv = 0.0
    mean_gap = (s.ts - ts[0]) / k
    if k >= 2 and mean_gap > 0:
        dev = [b - a - mean_gap for a, b in zip(ts, ts[1:])]
        dev.append(dt - mean_gap)
        squares = 0.0
        for d in dev:  # left to right, as the kernel adds: Python 3.12's sum() compensates, which moves the last bit
            squares += d * d
        gap_cv = math.sqrt(squares / k) / mean_gap
    cut = s.ts - 60
    # SimHash Hamming distances; similarity is 1 - d/64, so "similarity >= 0.9" is d <= 6.
    sh = s.simhash
    dists = [(x ^ sh).bit_count() for x in simhashes]
    n_same = prompts.count(s.prompt_hash)
    novelty = 0.0
    if len(s.buckets):
        bloom = state.bloom_cur if state.bloom_prev is None else state.bloom_cur | state.bloom_prev
        seen = np.unpackbits(bloom.view(np.uint8), bitorder="little")  # bit b is bucket b
        novelty = 1.0 - np.count_nonzero(seen[s.buckets]) / len(s.buckets)
    changed = s.param_hash != params[-1]
    lb_variety = 0
    if s.has_lb:
        variety = {lb for lb, p in zip(lbs, prompts) if p == s.prompt_hash}
        variety.add(s.lb_hash)
        variety.discard(0)
        lb_variety = len(variety)
    # Each flag bit summed at its place value, then shifted down: three comprehensions and
    # sums instead of a loop with three counter updates per row.
    n_logprobs = sum([f & 1 for f in flags])
    n_lb = sum([f & 2 for f in flags]) >> 1
    n_changed = sum([f & 4 for f in flags]) >> 2
    # Raw values in FEATURES order, from first_in_scope to cohort, encoded by the spec.
    raw = (  # floats or bools where the encoder is `float` (see _CHANGING)
        0.0,  # first_in_scope
        dt,  # dt_prev
        max(s.ts - first8, 0.0) / min(k, 8),  # dt_mean_k
        gap_cv,
        1 + len([t for t in ts if t > cut]),  # rate_1m
        state.ewma_1h * math.exp(-dt / 3600) + 1,  # rate_1h
        state.ewma_1d * math.exp(-dt / 86400) + 1,  # rate_1d
        state.total + 1,  # total
        min(max((0.5 - dists[-1] / 64.0) * 2.0, 0.0), 1.0),  # sim_prev
        min(max((0.5 - min(dists) / 64.0) * 2.0, 0.0), 1.0),  # sim_max
        len([d for d in dists if d <= 6]) / k,  # near_dup_share
        n_same / k,  # exact_repeat_share
        (len(set(prompts)) + (n_same == 0)) / (k + 1),  # distinct_share
        novelty,
        shapes.count(s.shape) / k,  # template_share
        changed,  # param_change
        (n_changed + changed) / (k + 1),  # param_change_share
        lb_variety,
        (n_lb + s.has_lb) / (k + 1),  # lb_share
        (n_logprobs + s.logprobs) / (k + 1),  # logprob_share
        max(crowd.campaign - 1, 0),  # campaign
        max(crowd.cohort - 1, 0),  # cohort
    )
    rel = list(raw)
    for i, encode in _CHANGING:
        rel[i] = encode(rel[i])
    return np.array([*s.own_values, *rel, *_SCOPE_FLAGS[scope]], dtype=np.float32)


def window(state: ScopeState, s: Summary, crowd: Crowd, scope: str) -> tuple[np.ndarray, np.ndarray]:
    """Append request `s` to the scope and return the model input for the latest WINDOW
    requests as stored: features float16[n, N_FEATURES] and hashed tokens uint16[n, N_TOKENS]
    (copies; the caller casts when it batches them for the network)."""
    return push(state, s, relational(state, s, crowd, scope))




if _META.size != ROW.itemsize - TAIL_FROM:
    raise RuntimeError("scope_window._META must unpack a ROW from its tokens field on")


# k rows' bytes with each row's fields from `tokens` on as one bytes item: a strided numpy copy
# of those columns cost several times the contiguous copy and this unpack.
_TAILS = [struct.Struct("<" + f"{TAIL_FROM}x{ROW.itemsize - TAIL_FROM}s" * k) for k in range(WINDOW + 1)]


def row_meta(state: ScopeState) -> bytes:
    """The stored rows' fields from `tokens` on, as bytes (what `_META` unpacks, row by row)."""
    return b"".join(_TAILS[state.n].unpack(state.rows[: state.n].tobytes()))


def fingerprint(state: ScopeState) -> tuple:
    """Everything `relational` reads from a scope's state. Two scopes with equal fingerprints
    give the same vector for the same request, apart from the scope flag: an API key or an
    address block used by one account only mirrors that account's history. Its item 4 is
    `row_meta(state)`, which `relational` takes to skip reading the rows again."""
    prev = state.bloom_prev.tobytes() if state.bloom_prev is not None else None
    return (state.n, state.total, state.ewma_1h, state.ewma_1d, row_meta(state), state.bloom_cur.tobytes(), prev)


# Each scope's flag columns, the vector's tail (checked at import above): `rescope` writes them
# as one slice instead of a fancy-indexed store from a list of columns.
_FLAG_TAILS = {sc: np.array(flags, dtype=np.float32) for sc, flags in _SCOPE_FLAGS.items()}


def same_history(feats: np.ndarray, tokens: np.ndarray, other_feats: np.ndarray, other_tokens: np.ndarray) -> bool:
    """Two windows that differ at most in their scope flags: the same requests, seen the same
    way. Compared as bytes (np.array_equal cost 5 us a call here), tokens first: cheaper, and
    most often the one that differs."""
    return (
        len(feats) == len(other_feats)
        and tokens.tobytes() == other_tokens.tobytes()
        and feats[:, :_REL_END].tobytes() == other_feats[:, :_REL_END].tobytes()
    )


def rescope(vec: np.ndarray, scope: str) -> np.ndarray:
    """`vec` (one vector, or a window of them) as computed for another scope, with this scope's
    flag instead."""
    out = vec.copy()
    out[..., _REL_END:] = _FLAG_TAILS[scope]
    return out


def push(state: ScopeState, s: Summary, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append request `s` with its feature vector `vec` (from `relational` on this state) and
    return the window, as `window` does: compiled (`window_kernel`) where numba is installed,
    else `push_reference`, which it equals bit for bit."""
    if push_kernel is None:
        return push_reference(state, s, vec)
    flags = int(s.logprobs) | (int(s.has_lb) << 1) | (int(bool(vec[_PARAM_CHANGE])) << 2)
    state.reserve()
    # numpy converts the vector to float16 as the reference's record store does.
    state.ewma_1h, state.ewma_1d, feats, tokens = push_kernel(
        state.rows.view(np.uint8), state.n, vec.astype(np.float16).view(np.uint8), s.tokens, s.ts, s.simhash, s.shape, s.prompt_hash, s.lb_hash, s.param_hash,
        flags, state.ewma_1h, state.ewma_1d, state.bloom_cur, s.bloom_mask,
    )  # fmt: skip
    state.n = len(feats)
    state.total += 1
    state.bloom_count += 1
    if state.bloom_count >= BLOOM_ROTATE:
        state.bloom_prev, state.bloom_cur = state.bloom_cur, np.zeros(BLOOM_WORDS, dtype=np.uint64)
        state.bloom_count = 0
    return feats.view(np.float16), tokens.view(np.uint16)


def push_reference(state: ScopeState, s: Summary, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`push` in Python: the definition the compiled kernel is checked against."""
    changed = bool(vec[_PARAM_CHANGE])  # relational already compared with the predecessor
    last = state.last_ts
    flags = int(s.logprobs) | (int(s.has_lb) << 1) | (int(changed) << 2)
    row = (vec, s.tokens, s.ts, s.simhash, s.shape, s.prompt_hash, s.lb_hash, s.param_hash, flags)
    if last is not None:
        gap = max(s.ts - last, 0)
        state.ewma_1h = state.ewma_1h * math.exp(-gap / 3600) + 1
        state.ewma_1d = state.ewma_1d * math.exp(-gap / 86400) + 1
    else:
        state.ewma_1h = state.ewma_1d = 1.0
    state.total += 1
    state.bloom_cur |= s.bloom_mask
    state.bloom_count += 1
    if state.bloom_count >= BLOOM_ROTATE:
        state.bloom_prev, state.bloom_cur = state.bloom_cur, np.zeros(BLOOM_WORDS, dtype=np.uint64)
        state.bloom_count = 0
    state.append(row)
    h = state.history()
    # The stored float16 vector is what the model reads, in training and in serving alike.
    return h["vec"].copy(), h["tokens"].copy()
