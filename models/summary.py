"""`summarize(event)`: once per request, a compact `Summary` of it: numeric request facts,
parameter flags, client facts and text sketches (SimHash, novelty bloom bits, hashed token ids).
It holds no raw text, so the state stores keep nothing sensitive at rest."""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from moat.models.events import Event
from moat.models.feature_spec import BLOOM_WORDS, FEATURES, N_OWN, N_TOKENS, TEXT_LIMIT, TOKEN_VOCAB, UA_GROUPS

_UA_ONE_HOT = {g: tuple(float(g == h) for h in UA_GROUPS) for g in UA_GROUPS}
# The request features before the user-agent one-hot: (name, absent value, encoder).
_ENCODERS = [(f.name, f.absent, f.scale.encode) for f in FEATURES[: N_OWN - len(UA_GROUPS)]]
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
    total = sum(len(m.content) for m in msgs)
    newest = next((m.content for m in reversed(msgs) if m.role == "user"), msgs[-1].content if msgs else "")
    has_system = any(m.role in ("system", "developer") for m in msgs)
    tools = sum(m.role == "tool" for m in msgs)
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


def summarize(event: Event) -> Summary:
    newest, total_chars, n_msgs, has_system, tool_share = newest_text(event)
    text = newest[:TEXT_LIMIT]
    tokens = _WORD.findall(text)[:256]
    lower = [t.lower() for t in tokens]
    p = event.params
    lb = p.logit_bias or {}
    lb_vals = np.fromiter(lb.values(), dtype=np.float64, count=len(lb)) if lb else None
    head = text[:1024]
    n_chars = max(len(head), 1)
    # Raw values, encoded below by the spec; None is a field the request did not carry.
    raw = {
        "prompt_chars": total_chars,
        "last_chars": len(newest),
        "n_messages": n_msgs,
        "has_system": has_system,
        "tool_share": tool_share,
        "is_completion": event.messages is None,
        "temperature": p.temperature,
        "temperature_set": p.temperature is not None,
        "top_p_set": p.top_p is not None,
        "max_tokens": p.max_tokens,
        "max_tokens_set": p.max_tokens is not None,
        "n": p.n,
        "logprobs": p.logprobs,
        "top_logprobs": p.top_logprobs,
        "logit_bias_size": len(p.logit_bias) if p.logit_bias is not None else None,
        "logit_bias_max": float(np.abs(lb_vals).max()) if lb_vals is not None else None,
        "logit_bias_spread": float(lb_vals.std()) if lb_vals is not None else None,
        "seed_set": p.seed is not None,
        "stop_set": p.stop is not None,
        "stream": p.stream,
        "digit_share": len(_DIGIT.findall(head)) / n_chars,
        "nonascii_share": len(_NONASCII.findall(head)) / n_chars,
    }
    own = np.array(
        [*(absent if (x := raw[name]) is None else encode(x) for name, absent, encode in _ENCODERS), *_UA_ONE_HOT[ua_group(event.user_agent)]],
        dtype=np.float32,
    )
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
        client_fp=client_fingerprint(event),
        logprobs=bool(p.logprobs),
        has_lb=bool(lb),
    )
