"""`summarize(event)`: once per request, a compact `Summary` of it: numeric request facts,
parameter flags, client facts and text sketches (SimHash, novelty bloom bits, hashed token ids).
It holds no raw text, so the state stores keep nothing sensitive at rest."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from moat.models.events import Event
from moat.models.feature_spec import BLOOM_WORDS, FEATURES, GRAM_WORDS, MAX_WORDS, N_OWN, N_TOKENS, TEXT_LIMIT, TOKEN_VOCAB, UA_GROUPS
from moat.models.text_kernel import ascii_kernel, gram_kernel

_UA_ONE_HOT = {g: tuple(float(g == h) for h in UA_GROUPS) for g in UA_GROUPS}
# The request features before the user-agent one-hot, in FEATURES order: `summarize` builds
# their raw values as a tuple in this order (a dict per request cost more than the encoding).
_OWN_NAMES = (
    "prompt_chars", "last_chars", "n_messages", "has_system", "tool_share", "is_completion", "temperature", "temperature_set", "top_p_set", "max_tokens",
    "max_tokens_set", "n", "logprobs", "top_logprobs", "logit_bias_size", "logit_bias_max", "logit_bias_spread", "seed_set", "stop_set", "stream",
    "digit_share", "nonascii_share",
)  # fmt: skip
if _OWN_NAMES != tuple(f.name for f in FEATURES[: N_OWN - len(UA_GROUPS)]):
    raise RuntimeError("summary._OWN_NAMES must list the request features in FEATURES order")
# (absent value, encoder) per request feature, in that order.
_ENCODERS = [(f.absent, f.scale.encode) for f in FEATURES[: N_OWN - len(UA_GROUPS)]]
_WORD = re.compile(r"\w+")
_DIGIT = re.compile(r"\d")
_NONASCII = re.compile(r"[^\x00-\x7f]")
# Characters searched for words first: when they hold more than MAX_WORDS words, the first
# MAX_WORDS are complete and the rest of a long text need not be scanned.
_WORD_SCAN = 2048


def _crc(text: str, salt: int = 0) -> int:
    return zlib.crc32(text.encode("utf-8", "replace"), salt)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def gram_hashes(lower: list[str]) -> np.ndarray:
    """One CRC-32 per word unigram and bigram (first 64 words): shared by SimHash and novelty."""
    # Words hold no spaces (they are \w+ runs), so one encode of the joined text splits back
    # into the words' bytes: cheaper than encoding each gram.
    return _gram_hashes(" ".join(lower[:GRAM_WORDS]).encode("utf-8", "replace").split(b" ") if lower else [])


def _gram_hashes(words: list[bytes]) -> np.ndarray:
    # The bigrams joined by map (a C-level loop), not a comprehension: the same bytes a + b" " + b.
    grams = words + list(map(b" ".join, zip(words, words[1:])))
    return np.fromiter(map(zlib.crc32, grams), dtype=np.uint64, count=len(grams))


def simhash(hashes: np.ndarray) -> int:
    """64-bit SimHash over gram hashes (spread to 64 bits by a multiplicative mix); similar
    texts differ in few bits."""
    n = len(hashes)
    if not n:
        return 0
    h = (hashes | (hashes << np.uint64(32))) * _MIX
    # Per-bit counts over all grams. Each bit unpacks to one byte; read 8 such bytes as one
    # uint64 and the column sums count 8 bits at once, one per byte lane (at most 127 grams, so
    # no lane carries into the next). Then bit i is set where more than half the grams have it.
    lanes = np.unpackbits(h.view(np.uint8), bitorder="little").view(np.uint64).reshape(n, 8)
    counts = lanes.sum(axis=0).view(np.uint8)
    return int.from_bytes(np.packbits(counts > n // 2, bitorder="little").tobytes(), "little")


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
    # A dual-stack gateway reports IPv4 clients as ::ffff:a.b.c.d: without this, every one of
    # them would share the single block ::/48.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
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
    client_fp: int  # the client fingerprint: user agent, endpoint, model and parameter values
    logprobs: bool
    has_lb: bool
    # `own` as Python floats: every scope's vector starts with it, and a tolist per scope cost
    # more than keeping it once.
    own_values: tuple[float, ...]

    def scope_keys(self) -> list[tuple[str, str]]:
        keys = [("account", self.account_id)]
        if self.api_key_id:
            keys.append(("api_key", self.api_key_id))
        if self.ip_prefix:
            keys.append(("ip_prefix", self.ip_prefix))
        return keys


def newest_text(event: Event) -> tuple[str, int, int, bool, float]:
    """The newest user text, total characters, message count, system flag and tool share."""
    if event.messages is None:
        text = event.prompt or ""
        return text, len(text), 0, False, 0.0
    msgs = event.messages
    # One pass over a history that may be long (it grows with every turn).
    total = tools = 0
    has_system = False
    newest = None
    for m in msgs:
        total += len(m.content)
        role = m.role
        if role == "user":
            newest = m.content
        elif role == "tool":
            tools += 1
        elif role == "system" or role == "developer":
            has_system = True
    if newest is None:
        newest = msgs[-1].content if msgs else ""
    return newest, total, len(msgs), has_system, tools / max(len(msgs), 1)


def client_fingerprint(event: Event) -> int:
    """What one tool sends on every request: the exact user agent, endpoint and model, and the
    parameter dict it sets (names and values, not seed or logit_bias, which scripts vary per
    request). A cohort of sybil accounts run by one script shares it; people share it too (one
    browser version in one front-end), which the model learns to tell apart by what else the
    accounts do. Never 0 (0 is 'none' for the stores' keyed fingerprints)."""
    p = event.params
    habit = (p.temperature, p.top_p, p.max_tokens, p.n, p.logprobs, p.top_logprobs, p.stream, p.stop is not None, p.seed is not None, p.logit_bias is not None)
    return _crc(repr((event.user_agent, event.endpoint, event.model, habit))) or 1


def _words(text: str) -> list[str]:
    """The first MAX_WORDS words of `text`, scanning only a prefix when that prefix has more."""
    if len(text) > _WORD_SCAN:
        words = _WORD.findall(text, 0, _WORD_SCAN)
        if len(words) > MAX_WORDS:
            return words[:MAX_WORDS]
    return _WORD.findall(text)[:MAX_WORDS]


def _char_shares(head: str) -> tuple[float, float]:
    """Shares of digits and of non-ASCII characters in `head`."""
    n_chars = max(len(head), 1)
    if head.isascii():
        # In ASCII text \d is exactly 0-9, and nothing is non-ASCII.
        return sum(map(head.count, "0123456789")) / n_chars, 0 / n_chars
    return len(_DIGIT.findall(head)) / n_chars, len(_NONASCII.findall(head)) / n_chars


class TextSketch(NamedTuple):
    """Everything a summary derives from the newest text alone: the costly half of `summarize`
    (word scan, gram hashes, SimHash, bloom bits). Its arrays are shared by every summary of the
    same text, so they are read-only."""

    digit_share: float
    nonascii_share: float
    tokens: np.ndarray  # uint16[N_TOKENS]
    buckets: np.ndarray
    bloom_mask: np.ndarray
    simhash: int
    shape: int
    prompt_hash: int


def text_sketch(text: str) -> TextSketch:
    """The sketch of `text` (the newest text, already cut to TEXT_LIMIT), computed: compiled
    (`text_kernel`; all but the prompt hash for an ASCII text, the grams' half for any other)
    where numba is installed, else `text_sketch_reference`, which it equals bit for bit."""
    if gram_kernel is None or ascii_kernel is None:
        return text_sketch_reference(text)
    if text.isascii():
        # The whole sketch but the prompt hash in one compiled pass (`text_kernel._ascii_sketch`).
        digits, _, joined, shape, sim, buckets, mask, tok_ids = ascii_kernel(np.frombuffer(text.encode("ascii"), dtype=np.uint8))
        for a in (tok_ids, buckets, mask):
            a.flags.writeable = False
        n_chars = max(min(len(text), 1024), 1)
        return TextSketch(digits / n_chars, 0 / n_chars, tok_ids, buckets, mask, sim, shape, zlib.crc32(joined.tobytes()))
    tokens = _words(text)
    lowered_bytes = " ".join(tokens).lower().encode("utf-8", "replace")  # as the reference
    digit_share, nonascii_share = _char_shares(text[:1024])
    sim, buckets, mask, tok_ids = gram_kernel(np.frombuffer(lowered_bytes, dtype=np.uint8), len(tokens))
    for a in (tok_ids, buckets, mask):
        a.flags.writeable = False
    return TextSketch(digit_share, nonascii_share, tok_ids, buckets, mask, sim, shape_signature(tokens), zlib.crc32(lowered_bytes))


def text_sketch_reference(text: str) -> TextSketch:
    """`text_sketch` in Python: the definition the compiled kernel is checked against."""
    tokens = _words(text)
    # Lower-casing the space-joined words equals joining the lower-cased words (a space is
    # neither cased nor case-ignorable, so it isolates each word's case context).
    lowered_bytes = " ".join(tokens).lower().encode("utf-8", "replace")
    digit_share, nonascii_share = _char_shares(text[:1024])
    words = lowered_bytes.split(b" ", GRAM_WORDS)[:GRAM_WORDS] if tokens else []
    hashes = _gram_hashes(words)
    buckets = (hashes % np.uint64(BLOOM_WORDS * 64)).astype(np.intp)
    # The buckets as one bloom bitmap: bit b of the little-endian words is bucket b.
    flat = np.zeros(BLOOM_WORDS * 64, dtype=np.uint8)
    flat[buckets] = 1
    mask = np.packbits(flat, bitorder="little").view(np.uint64)
    # Hashed ids of the first N_TOKENS words (the first grams are the unigrams), 0-padded.
    ids = [1 + h % (TOKEN_VOCAB - 1) for h in hashes[: min(N_TOKENS, len(tokens))].tolist()]
    tok_ids = np.array(ids + [0] * (N_TOKENS - len(ids)), dtype=np.uint16)
    for a in (tok_ids, buckets, mask):
        a.flags.writeable = False
    return TextSketch(digit_share, nonascii_share, tok_ids, buckets, mask, simhash(hashes), shape_signature(tokens), zlib.crc32(lowered_bytes))


class SketchCache:
    """Recent texts' sketches, least recently used evicted. Prompts recur (a template re-sent,
    a probe repeated, a retry): on the dev-spread trace 55% of requests repeat a text among the
    last 16,384 distinct ones (44% among 4,096; no more with 65,536). A full cache holds about
    27 MB. Entries are keyed by a 128-bit BLAKE2b digest of the text, so no raw text is kept; a
    lock makes it safe for a threaded server (two threads missing on one text both compute it
    and store equal sketches)."""

    def __init__(self, size: int = 16384) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, TextSketch] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> TextSketch:
        # surrogatepass: an injective encoding of any str (a prompt may hold lone surrogates).
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        sketch = text_sketch(text)
        with self._lock:
            self._entries[key] = sketch
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return sketch

    def clear(self) -> None:
        """Forget every sketch (benchmarks time summarising from a cold cache)."""
        with self._lock:
            self._entries.clear()


SKETCHES = SketchCache()


def summarize(event: Event, ts: float | None = None) -> Summary:
    """The request's summary; `ts`, when given, replaces the event's time (a server that
    re-stamps an event passes its time here instead of copying the event)."""
    newest, total_chars, n_msgs, has_system, tool_share = newest_text(event)
    sk = SKETCHES.get(newest[:TEXT_LIMIT])
    p = event.params
    lb = p.logit_bias
    if lb:
        lb_vals = np.fromiter(lb.values(), dtype=np.float64, count=len(lb))
        lb_max, lb_spread = float(np.abs(lb_vals).max()), float(lb_vals.std())
    else:
        lb_max = lb_spread = None
    # Raw values in _OWN_NAMES order, encoded below by the spec; None is a field the request did not carry.
    raw = (
        total_chars,
        len(newest),
        n_msgs,
        has_system,
        tool_share,
        event.messages is None,  # is_completion
        p.temperature,
        p.temperature is not None,
        p.top_p is not None,
        p.max_tokens,
        p.max_tokens is not None,
        p.n,
        p.logprobs,
        p.top_logprobs,
        len(lb) if lb is not None else None,  # logit_bias_size
        lb_max,
        lb_spread,
        p.seed is not None,
        p.stop is not None,
        p.stream,
        sk.digit_share,
        sk.nonascii_share,
    )
    own = np.array(
        [*[absent if x is None else encode(x) for (absent, encode), x in zip(_ENCODERS, raw)], *_UA_ONE_HOT[ua_group(event.user_agent)]],
        dtype=np.float32,
    )
    params_sig = (p.temperature, p.top_p, p.max_tokens, p.n, p.logprobs, p.top_logprobs, p.stop if isinstance(p.stop, str) else tuple(p.stop or ()), event.endpoint)
    return Summary(
        ts=float(event.ts if ts is None else ts),
        account_id=event.account_id,
        api_key_id=event.api_key_id,
        ip_prefix=ip_prefix(event.client_ip),
        own=own,
        tokens=sk.tokens,
        buckets=sk.buckets,
        bloom_mask=sk.bloom_mask,
        simhash=sk.simhash,
        shape=sk.shape,
        prompt_hash=sk.prompt_hash,
        lb_hash=_crc(repr(sorted(lb.items()))) if lb else 0,
        param_hash=_crc(repr(params_sig)),
        client_fp=client_fingerprint(event),
        logprobs=bool(p.logprobs),
        has_lb=bool(lb),
        own_values=tuple(own.tolist()),
    )
