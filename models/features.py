"""Featurisation shared by training and serving (numpy only; never imports torch).

Two steps:
1. `summarize(event)` runs once per request and gives a compact `Summary`: numeric request
   facts, parameter flags, client facts and text sketches. It holds no raw text.
2. `window(state, summary, campaign)` computes the request's relational features against the
   scope's history (time gaps, similarity, novelty, repetition, parameter changes), appends
   the request to the scope's bounded history and returns the latest N per-request vectors,
   which is what the sequence model reads.

Every feature is listed in `FEATURES` with its definition and why it signals extraction; the
README's feature table lists them all (a test checks). Changing a feature's meaning or order means
bumping FEATURE_SPEC_VERSION, which makes old bundles refuse to load.
"""

from __future__ import annotations

import ipaddress
import math
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from moat.models.events import Event

FEATURE_SPEC_VERSION = "1"
WINDOW = 16  # requests of history the model reads per scope; longer horizons enter via the
# running aggregates (EWMA rates, novelty blooms, scope totals) inside each vector
N_TOKENS = 8  # hashed token ids kept per request (the first words carry the task)
TOKEN_VOCAB = 4096  # hashed token buckets; id 0 is padding
BLOOM_WORDS = 16  # 16 x 64 bits per novelty generation
BLOOM_ROTATE = 64  # requests per novelty generation: novelty looks back 64-128 requests
TEXT_LIMIT = 4096  # characters of a prompt used for sketches: features truncate, never fail
SCOPES = ("account", "api_key", "ip_prefix")
UA_GROUPS = ("sdk", "http_lib", "cli", "browser", "framework", "custom", "none")


@dataclass(frozen=True)
class FeatureDef:
    name: str
    definition: str
    why: str


FEATURES: list[FeatureDef] = [
    # Request facts (from the request alone).
    FeatureDef("prompt_chars", "log1p(characters of all message contents or the prompt) / 12", "distillation asks long, self-contained prompts; chat turns are short"),
    FeatureDef("last_chars", "log1p(characters of the newest user message) / 10", "separates a fresh query from a follow-up in a long history"),
    FeatureDef("n_messages", "log1p(number of messages) / 5", "real conversations grow; harvesting sends single-turn queries"),
    FeatureDef("has_system", "1 if a system or developer message is present", "apps carry a constant system prompt; often absent in scripted harvesting"),
    FeatureDef("tool_share", "share of messages with role tool", "agent loops are benign high-rate traffic"),
    FeatureDef("is_completion", "1 for the legacy completions endpoint (prompt field)", "logit probing favours raw completions"),
    FeatureDef("temperature", "temperature / 2, or 0.5 when absent", "temperature 0 or fixed values mark scripted clients"),
    FeatureDef("temperature_set", "1 if temperature was sent", "SDK defaults vs explicit sampling control"),
    FeatureDef("top_p_set", "1 if top_p was sent", "explicit sampling control"),
    FeatureDef("max_tokens", "log1p(max_tokens) / 9, 0 when absent", "max_tokens=1 reads one distribution; huge budgets harvest long outputs"),
    FeatureDef("max_tokens_set", "1 if max_tokens was sent", "explicit output control"),
    FeatureDef("n", "log(n) / log(128)", "n > 1 harvests several samples per query"),
    FeatureDef("logprobs", "1 if logprobs requested", "logprobs leak the output distribution"),
    FeatureDef("top_logprobs", "top_logprobs / 20", "more alternatives leak more of the distribution"),
    FeatureDef("logit_bias_size", "log1p(entries in logit_bias) / 6", "large or changing biases probe the logit vector"),
    FeatureDef("logit_bias_max", "max |bias| / 100", "±100 biases force or ban tokens for probing"),
    FeatureDef("logit_bias_spread", "std of bias values / 100", "random bias magnitudes mark evasive probes"),
    FeatureDef("seed_set", "1 if seed was sent", "reproducible sampling, common in harvesting and in evals"),
    FeatureDef("stop_set", "1 if stop was sent", "scripted clients"),
    FeatureDef("stream", "1 if stream was requested", "interactive apps stream; batch harvesting rarely does"),
    FeatureDef("digit_share", "share of digits in the newest text", "documents and sweeps over numbers"),
    FeatureDef("nonascii_share", "share of non-ASCII characters in the newest text", "language coverage sweeps"),
    *[FeatureDef(f"ua_{g}", f"1 if the user agent is of group '{g}'", "client kind; weak alone (attackers use SDKs too)") for g in UA_GROUPS],
    # Relational features (the request against its scope's history).
    FeatureDef("first_in_scope", "1 if the scope has no earlier request", "anchors the start of a sequence"),
    FeatureDef("dt_prev", "log1p(seconds since the previous request) / 12", "machine pace vs human think time"),
    FeatureDef("dt_mean_k", "log1p(mean gap over the last 8 requests) / 12", "sustained pace"),
    FeatureDef("gap_cv", "coefficient of variation of gaps in the window, clipped to 3, / 3", "steady machine timing has a low CV"),
    FeatureDef("rate_1m", "log1p(requests in the last 60 s within the window) / 4", "short bursts"),
    FeatureDef("rate_1h", "log1p(EWMA request count, 1 h time constant) / 8", "sustained volume over an hour"),
    FeatureDef("rate_1d", "log1p(EWMA request count, 1 day time constant) / 10", "daily volume; harvesting needs thousands"),
    FeatureDef("total", "log1p(requests ever seen in this scope) / 12", "scope age in requests"),
    FeatureDef("sim_prev", "SimHash similarity to the previous prompt, rescaled so 0.5 -> 0", "near-duplicate iteration or probing"),
    FeatureDef("sim_max", "max SimHash similarity to any prompt in the window, rescaled", "perturbation of earlier seeds (active learning)"),
    FeatureDef("near_dup_share", "share of window prompts with similarity >= 0.9", "near-duplicate bursts"),
    FeatureDef("exact_repeat_share", "share of window prompts identical to this one", "same prompt re-asked (probing, evals)"),
    FeatureDef("distinct_share", "distinct prompts in window (with this one) / its size", "every query new: dataset replay and sweeps"),
    FeatureDef("novelty", "share of the prompt's word n-gram buckets unseen in the last 64-128 requests", "coverage-seeking traffic keeps finding new content"),
    FeatureDef("template_share", "share of window prompts with this prompt's shape signature", "template reuse: batch jobs and coverage sweeps"),
    FeatureDef("param_change", "1 if the parameter signature differs from the previous request", "parameter probing"),
    FeatureDef("param_change_share", "share of window requests whose parameter signature differs from their predecessor", "systematic parameter variation"),
    FeatureDef("lb_variety", "log1p(distinct logit_bias values among window requests with this exact prompt) / 5", "logit probing varies bias over one prompt"),
    FeatureDef("lb_share", "share of window requests with a logit_bias", "sustained bias use"),
    FeatureDef("logprob_share", "share of window requests asking for logprobs", "sustained distribution harvesting"),
    FeatureDef("campaign", "log1p(distinct accounts sending this template in the last hour, minus one) / 5", "one campaign spread over many accounts"),
    *[FeatureDef(f"scope_{s}", f"1 if this window is the '{s}' scope", "lets one model read account, key and address windows") for s in SCOPES],
]
N_FEATURES = len(FEATURES)
_IDX = {f.name: i for i, f in enumerate(FEATURES)}
N_OWN = _IDX["first_in_scope"]  # features [0, N_OWN) come from the request alone
# Relational features that are 1 for a scope's first request (no history: everything is new).
_SCOPE_IDX = {sc: _IDX[f"scope_{sc}"] for sc in SCOPES}
_SCOPE_FLAGS = list(_SCOPE_IDX.values())
_FIRST_ONES = [_IDX[n] for n in ("first_in_scope", "dt_prev", "dt_mean_k", "distinct_share", "novelty", "template_share")]

_UA_ONE_HOT = {g: tuple(float(g == h) for h in UA_GROUPS) for g in UA_GROUPS}
_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_NONASCII = re.compile(r"[^\x00-\x7f]")


def _crc(text: str, salt: int = 0) -> int:
    return zlib.crc32(text.encode("utf-8", "replace"), salt)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def gram_hashes(lower: list[str]) -> np.ndarray:
    """One CRC-32 per word unigram and bigram (first 64 words): shared by SimHash and novelty."""
    # Words hold no spaces (they are \w+ runs), so one encode of the joined text splits back
    # into the words' bytes: cheaper than encoding each gram.
    words = " ".join(lower[:64]).encode("utf-8", "replace").split(b" ") if lower else []
    grams = words + [a + b" " + b for a, b in zip(words, words[1:])]
    return np.array(list(map(zlib.crc32, grams)), dtype=np.uint64)


def simhash(hashes: np.ndarray) -> int:
    """64-bit SimHash over gram hashes (spread to 64 bits by a multiplicative mix); similar
    texts differ in few bits."""
    if not len(hashes):
        return 0
    h = (hashes | (hashes << np.uint64(32))) * _MIX
    # Per-bit counts over all grams: unpack each little-endian word into its 64 bits.
    bits = np.unpackbits(h.view(np.uint8), bitorder="little").reshape(-1, 64).sum(axis=0)
    return int(np.packbits(bits * 2 > len(h), bitorder="little").view(np.uint64)[0])


def shape_signature(tokens: list[str]) -> int:
    """Hash of the first 6 tokens with numbers and capitalised names masked, so templates show."""
    masked = ["#" if t.isdigit() else "N" if t[:1].isupper() else t.lower() for t in tokens[:6]]
    return _crc(" ".join(masked))


@lru_cache(maxsize=1 << 16)
def ip_prefix(ip: str | None) -> str | None:
    """/24 for IPv4, /48 for IPv6; None for a missing or unparseable address. Cached: a
    gateway sees the same addresses over and over, and parsing is a visible share of a request."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


@lru_cache(maxsize=1 << 14)
def ua_group(ua: str | None) -> str:
    if not ua:
        return "none"
    u = ua.lower()
    if "langchain" in u or "llamaindex" in u or "litellm" in u:
        return "framework"
    if "openai/" in u or "anthropic" in u:
        return "sdk"
    if "mozilla" in u:
        return "browser"
    if "curl" in u or "wget" in u:
        return "cli"
    if any(k in u for k in ("python-requests", "httpx", "aiohttp", "go-http", "node-fetch", "axios", "okhttp", "java")):
        return "http_lib"
    return "custom"


@dataclass(slots=True)
class Summary:
    """What the state keeps of one request: numbers and sketches, never raw text."""

    ts: float
    account_id: str
    api_key_id: str | None
    ip_prefix: str | None
    own: np.ndarray  # float32[N_OWN]
    tokens: np.ndarray  # uint16[N_TOKENS], hashed ids, 0 = padding
    buckets: np.ndarray  # intp n-gram buckets for novelty (bit positions in a scope's bloom)
    bloom_mask: np.ndarray  # uint64[BLOOM_WORDS]: the buckets as bloom bits, OR-ed into each scope
    simhash: int
    shape: int
    prompt_hash: int
    lb_hash: int
    param_hash: int
    logprobs: bool
    has_lb: bool

    def scope_keys(self) -> list[tuple[str, str]]:
        keys = [("account", self.account_id)]
        if self.api_key_id:
            keys.append(("api_key", self.api_key_id))
        if self.ip_prefix:
            keys.append(("ip_prefix", self.ip_prefix))
        return keys


def _texts(event: Event) -> tuple[str, int, int, bool, float]:
    """The newest user text, total characters, message count, system flag and tool share."""
    if event.messages is None:
        text = event.prompt or ""
        return text, len(text), 0, False, 0.0
    msgs = event.messages
    total = sum(len(m.content) for m in msgs)
    newest = next((m.content for m in reversed(msgs) if m.role == "user"), msgs[-1].content if msgs else "")
    has_system = any(m.role in ("system", "developer") for m in msgs)
    tools = sum(m.role == "tool" for m in msgs)
    return newest, total, len(msgs), has_system, tools / max(len(msgs), 1)


def summarize(event: Event) -> Summary:
    newest, total_chars, n_msgs, has_system, tool_share = _texts(event)
    text = newest[:TEXT_LIMIT]
    tokens = _WORD.findall(text)[:256]
    lower = [t.lower() for t in tokens]
    p = event.params
    lb = p.logit_bias or {}
    lb_vals = np.fromiter(lb.values(), dtype=np.float64, count=len(lb)) if lb else None
    head = text[:1024]
    n_chars = max(len(head), 1)
    own = np.zeros(N_OWN, dtype=np.float32)
    own[:N_OWN] = [
        math.log1p(total_chars) / 12,
        math.log1p(len(newest)) / 10,
        math.log1p(n_msgs) / 5,
        float(has_system),
        tool_share,
        float(event.messages is None),
        (p.temperature / 2) if p.temperature is not None else 0.5,
        float(p.temperature is not None),
        float(p.top_p is not None),
        math.log1p(p.max_tokens) / 9 if p.max_tokens else 0.0,
        float(p.max_tokens is not None),
        math.log(p.n or 1) / math.log(128),
        float(bool(p.logprobs)),
        (p.top_logprobs or 0) / 20,
        math.log1p(len(lb)) / 6,
        float(np.abs(lb_vals).max()) / 100 if lb_vals is not None else 0.0,
        float(lb_vals.std()) / 100 if lb_vals is not None else 0.0,
        float(p.seed is not None),
        float(p.stop is not None),
        float(bool(p.stream)),
        len(_DIGIT.findall(head)) / n_chars,
        len(_NONASCII.findall(head)) / n_chars,
        *_UA_ONE_HOT[ua_group(event.user_agent)],
    ]
    hashes = gram_hashes(lower)
    buckets = (hashes % np.uint64(BLOOM_WORDS * 64)).astype(np.intp)
    # The buckets as one bloom bitmap: bit b of the little-endian words is bucket b.
    flat = np.zeros(BLOOM_WORDS * 64, dtype=np.uint8)
    flat[buckets] = 1
    mask = np.packbits(flat, bitorder="little").view(np.uint64)
    tok_ids = np.zeros(N_TOKENS, dtype=np.uint16)
    n_tok = min(N_TOKENS, len(lower))
    tok_ids[:n_tok] = 1 + hashes[:n_tok] % np.uint64(TOKEN_VOCAB - 1)
    params_sig = (p.temperature, p.top_p, p.max_tokens, p.n, p.logprobs, p.top_logprobs, p.stop if isinstance(p.stop, str) else tuple(p.stop or ()), event.endpoint)
    return Summary(
        ts=float(event.ts),
        account_id=event.account_id,
        api_key_id=event.api_key_id,
        ip_prefix=ip_prefix(event.client_ip),
        own=own,
        tokens=tok_ids,
        buckets=buckets,
        bloom_mask=mask,
        simhash=simhash(hashes),
        shape=shape_signature(tokens),
        prompt_hash=_crc(" ".join(lower)),
        lb_hash=_crc(repr(sorted(lb.items()))) if lb else 0,
        param_hash=_crc(repr(params_sig)),
        logprobs=bool(p.logprobs),
        has_lb=bool(lb),
    )


# One stored row per request of a scope's history.
ROW = np.dtype([
    ("vec", np.float16, (N_FEATURES,)),
    ("tokens", np.uint16, (N_TOKENS,)),
    ("ts", np.float64),
    ("simhash", np.uint64),
    ("shape", np.uint32),
    ("prompt", np.uint32),
    ("lb", np.uint32),
    ("param", np.uint32),
    ("flags", np.uint8),  # bit 0: logprobs, bit 1: logit_bias, bit 2: param changed from predecessor
])


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
    hold_action: int = 0  # policy hysteresis: the action level held and until when
    hold_until: float = 0.0

    @property
    def last_ts(self) -> float | None:
        return float(self.rows["ts"][self.n - 1]) if self.n else None

    def history(self) -> np.ndarray:
        return self.rows[: self.n]

    def append(self, row: tuple) -> None:
        if self.n == len(self.rows):
            if self.n < WINDOW:
                grown = np.zeros(min(2 * len(self.rows), WINDOW), dtype=ROW)
                grown[: self.n] = self.rows
                self.rows = grown
            else:
                # Shift by one row as raw bytes: a structured-array slice copy with sub-array
                # fields takes numpy's slow path and cost more than the rest of the request.
                raw = self.rows.view(np.uint8)
                raw[: -ROW.itemsize] = raw[ROW.itemsize :]
                self.n -= 1
        self.rows[self.n] = row
        self.n += 1

    def nbytes(self) -> int:
        return self.rows.nbytes + self.bloom_cur.nbytes + (self.bloom_prev.nbytes if self.bloom_prev is not None else 0) + 8 * 8


def relational(state: ScopeState, s: Summary, campaign: int, scope: str) -> np.ndarray:
    """The full feature vector of request `s` against the scope's history (state unchanged).

    This runs once per scope for every request served, over at most WINDOW rows. At that size
    a numpy call on a strided field costs more than a Python pass over `.tolist()`, so each
    stored field is read once as a list and the window statistics are plain Python."""
    vec = np.zeros(N_FEATURES, dtype=np.float32)
    vec[:N_OWN] = s.own
    vec[_SCOPE_IDX[scope]] = 1.0
    k = state.n
    vec[_IDX["total"]] = math.log1p(state.total + 1) / 12
    vec[_IDX["campaign"]] = math.log1p(max(campaign - 1, 0)) / 5
    if k == 0:
        vec[_FIRST_ONES] = 1.0
        vec[_IDX["rate_1m"]] = math.log1p(1) / 4
        vec[_IDX["rate_1h"]] = math.log1p(1) / 8
        vec[_IDX["rate_1d"]] = math.log1p(1) / 10
        vec[_IDX["lb_share"]] = float(s.has_lb)
        vec[_IDX["logprob_share"]] = float(s.logprobs)
        return vec
    h = state.rows[:k]
    ts = h["ts"].tolist()
    dt = max(s.ts - ts[-1], 0.0)
    first8 = ts[-8] if k >= 8 else ts[0]
    gap_cv = 0.0
    mean_gap = (s.ts - ts[0]) / k
    if k >= 2 and mean_gap > 0:
        dev = [b - a - mean_gap for a, b in zip(ts, ts[1:])]
        dev.append(dt - mean_gap)
        gap_cv = min(math.sqrt(sum([d * d for d in dev]) / k) / mean_gap, 3.0) / 3
    cut = s.ts - 60
    # SimHash Hamming distances; similarity is 1 - d/64, so "similarity >= 0.9" is d <= 6.
    dists = [(x ^ s.simhash).bit_count() for x in h["simhash"].tolist()]
    prompts = h["prompt"].tolist()
    n_same = prompts.count(s.prompt_hash)
    novelty = 0.0
    if len(s.buckets):
        bloom = state.bloom_cur if state.bloom_prev is None else state.bloom_cur | state.bloom_prev
        seen = np.unpackbits(bloom.view(np.uint8), bitorder="little")  # bit b is bucket b
        novelty = 1.0 - np.count_nonzero(seen[s.buckets]) / len(s.buckets)
    changed = s.param_hash != int(h["param"][-1])
    lb_variety = 0.0
    if s.has_lb:
        lbs = {lb for lb, p in zip(h["lb"].tolist(), prompts) if p == s.prompt_hash}
        lbs.add(s.lb_hash)
        lbs.discard(0)
        lb_variety = math.log1p(len(lbs)) / 5
    # Counts of each flag combination give the three flag shares in one call.
    fc = np.bincount(h["flags"], minlength=8).tolist()
    n_logprobs, n_lb, n_changed = fc[1] + fc[3] + fc[5] + fc[7], fc[2] + fc[3] + fc[6] + fc[7], fc[4] + fc[5] + fc[6] + fc[7]
    # In FEATURES order, from first_in_scope to campaign: one slice assignment.
    vec[_IDX["first_in_scope"] : _IDX["campaign"] + 1] = (
        0.0,  # first_in_scope
        math.log1p(dt) / 12,  # dt_prev
        math.log1p(max(s.ts - first8, 0.0) / min(k, 8)) / 12,  # dt_mean_k
        gap_cv,
        math.log1p(1 + len([t for t in ts if t > cut])) / 4,  # rate_1m
        math.log1p(state.ewma_1h * math.exp(-dt / 3600) + 1) / 8,  # rate_1h
        math.log1p(state.ewma_1d * math.exp(-dt / 86400) + 1) / 10,  # rate_1d
        math.log1p(state.total + 1) / 12,  # total
        min(max((0.5 - dists[-1] / 64.0) * 2.0, 0.0), 1.0),  # sim_prev
        min(max((0.5 - min(dists) / 64.0) * 2.0, 0.0), 1.0),  # sim_max
        len([d for d in dists if d <= 6]) / k,  # near_dup_share
        n_same / k,  # exact_repeat_share
        (len(set(prompts)) + (n_same == 0)) / (k + 1),  # distinct_share
        novelty,
        h["shape"].tolist().count(s.shape) / k,  # template_share
        float(changed),  # param_change
        (n_changed + changed) / (k + 1),  # param_change_share
        lb_variety,
        (n_lb + s.has_lb) / (k + 1),  # lb_share
        (n_logprobs + s.logprobs) / (k + 1),  # logprob_share
        math.log1p(max(campaign - 1, 0)) / 5,  # campaign
    )
    return vec


def window(state: ScopeState, s: Summary, campaign: int, scope: str) -> tuple[np.ndarray, np.ndarray]:
    """Append request `s` to the scope and return the model input for the latest WINDOW
    requests as stored: features float16[n, N_FEATURES] and hashed tokens uint16[n, N_TOKENS]
    (copies; the caller casts when it batches them for the network)."""
    return push(state, s, relational(state, s, campaign, scope))


_META_FROM = ROW.fields["tokens"][1]  # byte offset where a row's non-feature fields start


def fingerprint(state: ScopeState) -> tuple:
    """Everything `relational` reads from a scope's state. Two scopes with equal fingerprints
    give the same vector for the same request, apart from the scope flag: an API key or an
    address block used by one account only mirrors that account's history."""
    k = state.n
    meta = state.rows.view(np.uint8).reshape(-1, ROW.itemsize)[:k, _META_FROM:].tobytes()
    prev = state.bloom_prev.tobytes() if state.bloom_prev is not None else None
    return (k, state.total, state.ewma_1h, state.ewma_1d, meta, state.bloom_cur.tobytes(), prev)


def rescope(vec: np.ndarray, scope: str) -> np.ndarray:
    """`vec` as computed for another scope, with this scope's flag instead."""
    out = vec.copy()
    out[_SCOPE_FLAGS] = 0.0
    out[_SCOPE_IDX[scope]] = 1.0
    return out


def push(state: ScopeState, s: Summary, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append request `s` with its feature vector `vec` (from `relational` on this state) and
    return the window, as `window` does."""
    changed = bool(vec[_IDX["param_change"]])  # relational already compared with the predecessor
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
