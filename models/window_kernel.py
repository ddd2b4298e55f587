"""A scope's window statistics (`scope_window.relational`) and row push (`scope_window.push`),
compiled with numba.

`relational` runs once per scope that does not mirror its account, for every request, over at
most WINDOW stored rows, and `push` once per scope. In Python the statistics and encoders cost
tens of us a scope; here they run as one compiled loop over the rows' bytes, and the push writes
those bytes directly. `relational_reference` and `push_reference` stay the definitions:
`tests/models/test_fast_paths.py` compares each kernel with its reference bit for bit, and they
are what runs where numba is not installed (a core-only install: numba comes with the serve and
train extras).

Every value is the same IEEE operation in the same order as the reference: the gap deviations
are summed left to right (CPython's `sum` of floats), `math.exp` and `math.log1p` call the C
library's, as CPython does, and Python's `min`/`max` are spelled out with their tie and NaN
behaviour. Nothing here uses fast-math.
"""

from __future__ import annotations

import math

import numpy as np

from moat.models import jit
from moat.models.feature_spec import FEATURES, INDEX, N_OWN, SCOPE_FLAG_COLUMNS
from moat.models.row import ROW, ROW_TAIL, TAIL_FROM

# The relational features' encoders as data, from first_in_scope to cohort (FEATURES order):
# kind 0 keeps the raw value (flag, share), 1 is min(x, cap) / divisor (linear; no cap: an
# infinite one), 2 is log1p(x) / divisor.
_KINDS = {"flag": 0, "share": 0, "linear": 1, "log1p": 2}
_RELATIONAL = FEATURES[N_OWN : INDEX["cohort"] + 1]
if any(f.scale.kind not in _KINDS for f in _RELATIONAL) or INDEX["cohort"] + 1 != min(SCOPE_FLAG_COLUMNS):
    raise RuntimeError("window_kernel encodes flag, share, linear and log1p relational features, followed by the scope flags")
ENC_KIND = np.array([_KINDS[f.scale.kind] for f in _RELATIONAL], dtype=np.int64)
ENC_DIV = np.array([f.scale.divisor for f in _RELATIONAL], dtype=np.float64)
ENC_CAP = np.array([math.inf if f.scale.cap is None else f.scale.cap for f in _RELATIONAL], dtype=np.float64)
N_RELATIONAL = len(_RELATIONAL)
# Positions in the relational block, named as the kernel writes them.
(R_FIRST, R_DT_PREV, R_DT_MEAN, R_GAP_CV, R_RATE_1M, R_RATE_1H, R_RATE_1D, R_TOTAL, R_SIM_PREV, R_SIM_MAX, R_NEAR_DUP, R_EXACT, R_DISTINCT, R_NOVELTY, R_TEMPLATE,
 R_PARAM_CHANGE, R_PARAM_SHARE, R_LB_VARIETY, R_LB_SHARE, R_LOGPROB_SHARE, R_CAMPAIGN, R_COHORT) = range(N_RELATIONAL)  # fmt: skip
if [f.name for f in _RELATIONAL] != [
    "first_in_scope", "dt_prev", "dt_mean_k", "gap_cv", "rate_1m", "rate_1h", "rate_1d", "total", "sim_prev", "sim_max", "near_dup_share", "exact_repeat_share",
    "distinct_share", "novelty", "template_share", "param_change", "param_change_share", "lb_variety", "lb_share", "logprob_share", "campaign", "cohort",
]:  # fmt: skip
    raise RuntimeError("window_kernel names the relational features in FEATURES order")


def _py_max(a: float, b: float) -> float:
    """Python's max(a, b): a unless b is greater (a NaN first argument is kept)."""
    return b if b > a else a


def _py_min(a: float, b: float) -> float:
    """Python's min(a, b): a unless b is smaller."""
    return b if b < a else a


def _popcount(x: np.uint64) -> int:
    # SWAR bit count: int.bit_count of a 64-bit value.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


def _encode(raw: np.ndarray, out: np.ndarray, at: int) -> None:
    for i in range(len(raw)):
        x = raw[i]
        kind = ENC_KIND[i]
        if kind == 1:
            x = _py_min(x, ENC_CAP[i]) / ENC_DIV[i]
        elif kind == 2:
            x = math.log1p(x) / ENC_DIV[i]
        out[at + i] = x


def _relational(
    rows: np.ndarray, ts: float, simhash: np.uint64, prompt: int, shape: int, param: int, lb: int, has_lb: bool, logprobs: bool, buckets: np.ndarray,
    bloom_cur: np.ndarray, bloom_prev: np.ndarray, total: int, ewma_1h: float, ewma_1d: float, campaign: int, cohort: int, own: np.ndarray, flags: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The float32 feature vector of a request against k >= 1 stored rows (`rows`: ROW_TAIL
    records, oldest first): the request's own features, the relational ones, the scope flags.
    Pass `bloom_cur` as `bloom_prev` when the scope has not rotated yet."""
    k = len(rows)
    last = rows[k - 1]
    dt = _py_max(ts - last.ts, 0.0)
    first8 = rows[k - 8].ts if k >= 8 else rows[0].ts
    gap_cv = 0.0
    mean_gap = (ts - rows[0].ts) / k
    if k >= 2 and mean_gap > 0:
        acc = 0.0
        for i in range(1, k):
            d = rows[i].ts - rows[i - 1].ts - mean_gap
            acc += d * d
        d = dt - mean_gap
        acc += d * d
        gap_cv = math.sqrt(acc / k) / mean_gap
    cut = ts - 60
    n_recent = n_near = n_same = n_shape = n_logprobs = n_lb = n_changed = 0
    d_min = 64
    n_distinct = 0
    for i in range(k):
        r = rows[i]
        if r.ts > cut:
            n_recent += 1
        d = _popcount(r.simhash ^ simhash)
        d_min = min(d_min, d)
        if d <= 6:
            n_near += 1
        if r.prompt == prompt:
            n_same += 1
        if r.shape == shape:
            n_shape += 1
        n_logprobs += r.flags & 1
        n_lb += (r.flags >> 1) & 1
        n_changed += (r.flags >> 2) & 1
        seen = False
        for j in range(i):
            if rows[j].prompt == r.prompt:
                seen = True
                break
        if not seen:
            n_distinct += 1
    d_last = _popcount(last.simhash ^ simhash)
    novelty = 0.0
    if len(buckets):
        hit = 0
        for b in buckets:
            word = bloom_cur[b >> 6] | bloom_prev[b >> 6]
            hit += (word >> np.uint64(b & 63)) & np.uint64(1) != 0
        novelty = 1.0 - hit / len(buckets)
    changed = param != last.param
    lb_variety = 0
    if has_lb:
        # Distinct logit_bias fingerprints among this prompt's rows and this request, 0 not counted.
        for i in range(k + 1):
            v = rows[i].lb if i < k else lb
            if v == 0 or (i < k and rows[i].prompt != prompt):
                continue
            dup = False
            for j in range(i):
                if rows[j].lb == v and rows[j].prompt == prompt:
                    dup = True
                    break
            if not dup:
                lb_variety += 1
    raw = np.empty(N_RELATIONAL, dtype=np.float64)
    raw[R_FIRST] = 0.0
    raw[R_DT_PREV] = dt
    raw[R_DT_MEAN] = _py_max(ts - first8, 0.0) / min(k, 8)
    raw[R_GAP_CV] = gap_cv
    raw[R_RATE_1M] = 1 + n_recent
    raw[R_RATE_1H] = ewma_1h * math.exp(-dt / 3600) + 1
    raw[R_RATE_1D] = ewma_1d * math.exp(-dt / 86400) + 1
    raw[R_TOTAL] = total + 1
    raw[R_SIM_PREV] = _py_min(_py_max((0.5 - d_last / 64.0) * 2.0, 0.0), 1.0)
    raw[R_SIM_MAX] = _py_min(_py_max((0.5 - d_min / 64.0) * 2.0, 0.0), 1.0)
    raw[R_NEAR_DUP] = n_near / k
    raw[R_EXACT] = n_same / k
    raw[R_DISTINCT] = (n_distinct + (n_same == 0)) / (k + 1)
    raw[R_NOVELTY] = novelty
    raw[R_TEMPLATE] = n_shape / k
    raw[R_PARAM_CHANGE] = 1.0 if changed else 0.0
    raw[R_PARAM_SHARE] = (n_changed + changed) / (k + 1)
    raw[R_LB_VARIETY] = lb_variety
    raw[R_LB_SHARE] = (n_lb + has_lb) / (k + 1)
    raw[R_LOGPROB_SHARE] = (n_logprobs + logprobs) / (k + 1)
    raw[R_CAMPAIGN] = max(campaign - 1, 0)
    raw[R_COHORT] = max(cohort - 1, 0)
    n_own = len(own)
    vec = np.empty(n_own + N_RELATIONAL + len(flags), dtype=np.float32)
    vec[:n_own] = own
    _encode(raw, vec, n_own)
    vec[n_own + N_RELATIONAL :] = flags
    return vec


# Byte offsets in a stored row (ROW) that `_push` writes.
ROW_SIZE = ROW.itemsize
VEC_BYTES = ROW.fields["tokens"][1]  # the float16 vector comes first
if ROW.fields["vec"][1] != 0 or VEC_BYTES != TAIL_FROM:
    raise RuntimeError("window_kernel writes a ROW as its vector, then its tokens, then ROW_TAIL's fields")
TOKEN_BYTES = ROW.fields["tokens"][0].itemsize
TS_AT, SIMHASH_AT, SHAPE_AT, PROMPT_AT, LB_AT, PARAM_AT, FLAGS_AT = (TAIL_FROM + ROW_TAIL.fields[f][1] for f in ("ts", "simhash", "shape", "prompt", "lb", "param", "flags"))


def _put(raw: np.ndarray, at: int, data: np.ndarray) -> None:
    for i in range(len(data)):
        raw[at + i] = data[i]


def _push(
    raw: np.ndarray, n: int, vec16: np.ndarray, tokens: np.ndarray, ts: float, simhash: np.uint64, shape: int, prompt: int, lb: int, param: int, flags: int,
    ewma_1h: float, ewma_1d: float, bloom_cur: np.ndarray, bloom_mask: np.ndarray,
) -> tuple[float, float, np.ndarray, np.ndarray]:  # fmt: skip
    """`scope_window.push_reference` on a scope's rows as bytes (`raw`, ROW records, `n` of
    them held, full when `n` rows fill it): OR the request's bloom bits into `bloom_cur`, write
    its row (its float16 vector as bytes, `vec16`) after the held rows, shifting the oldest out
    when full. Returns the new EWMA rates and the window's vectors (bytes of float16) and
    token ids (bytes of uint16), one row per request, oldest first."""
    scalar = np.empty(1, dtype=np.float64)  # native bytes of each scalar field, via views
    if n:
        at = (n - 1) * ROW_SIZE + TS_AT
        scalar_bytes = scalar.view(np.uint8)
        for i in range(8):
            scalar_bytes[i] = raw[at + i]
        gap = _py_max(ts - scalar[0], 0.0)
        ewma_1h = ewma_1h * math.exp(-gap / 3600) + 1
        ewma_1d = ewma_1d * math.exp(-gap / 86400) + 1
    else:
        ewma_1h = ewma_1d = 1.0
    for i in range(len(bloom_cur)):
        bloom_cur[i] |= bloom_mask[i]
    if n * ROW_SIZE == len(raw):
        for i in range(len(raw) - ROW_SIZE):  # shift the oldest row out, front to back
            raw[i] = raw[i + ROW_SIZE]
        n -= 1
    row = n * ROW_SIZE
    _put(raw, row, vec16)
    _put(raw, row + VEC_BYTES, tokens.view(np.uint8))
    scalar[0] = ts
    _put(raw, row + TS_AT, scalar.view(np.uint8))
    _put(raw, row + SIMHASH_AT, np.array([simhash], dtype=np.uint64).view(np.uint8))
    _put(raw, row + SHAPE_AT, np.array([shape, prompt, lb, param], dtype=np.uint32).view(np.uint8))
    raw[row + FLAGS_AT] = flags
    n += 1
    feats = np.empty((n, VEC_BYTES), dtype=np.uint8)
    toks = np.empty((n, TOKEN_BYTES), dtype=np.uint8)
    for r in range(n):
        feats[r] = raw[r * ROW_SIZE : r * ROW_SIZE + VEC_BYTES]
        toks[r] = raw[r * ROW_SIZE + VEC_BYTES : r * ROW_SIZE + VEC_BYTES + TOKEN_BYTES]
    return ewma_1h, ewma_1d, feats, toks


relational_kernel = push_kernel = None
if jit.AVAILABLE:  # else scope_window runs its Python references
    _nb = jit.types

    def _ro(dtype: object) -> object:
        # Read-only arrays: the rows come from bytes and the sketches' arrays are frozen; a
        # writable array is accepted for such a parameter too.
        return _nb.Array(dtype, 1, "C", readonly=True)

    _SIGNATURE = _nb.float32[::1](
        _ro(jit.from_dtype(ROW_TAIL)), _nb.float64, _nb.uint64, _nb.int64, _nb.int64, _nb.int64, _nb.int64, _nb.boolean, _nb.boolean, _ro(_nb.intp),
        _ro(_nb.uint64), _ro(_nb.uint64), _nb.int64, _nb.float64, _nb.float64, _nb.int64, _nb.int64, _ro(_nb.float32), _ro(_nb.float32),
    )  # fmt: skip
    # The helpers are rebound to their compiled forms, which the kernels call.
    _py_max = jit.kernel(inline=True)(_py_max)
    _py_min = jit.kernel(inline=True)(_py_min)
    _popcount = jit.kernel(inline=True)(_popcount)
    _encode = jit.kernel()(_encode)
    relational_kernel = jit.kernel([_SIGNATURE])(_relational)
    _PUSH_SIGNATURE = _nb.Tuple((_nb.float64, _nb.float64, _nb.uint8[:, ::1], _nb.uint8[:, ::1]))(
        _nb.uint8[::1], _nb.int64, _ro(_nb.uint8), _ro(_nb.uint16), _nb.float64, _nb.uint64, _nb.int64, _nb.int64, _nb.int64, _nb.int64, _nb.int64,
        _nb.float64, _nb.float64, _nb.uint64[::1], _ro(_nb.uint64),
    )  # fmt: skip
    _put = jit.kernel(inline=True)(_put)
    push_kernel = jit.kernel([_PUSH_SIGNATURE])(_push)
