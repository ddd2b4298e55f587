"""Shared state in Redis, so several scorer replicas see one history per scope.

Per scope: a head (running aggregates and novelty blooms, packed bytes) and a ring buffer of
the latest WINDOW rows (a list trimmed on append), both with a TTL. A request's update is an
optimistic transaction: WATCH the head, read head and rows, compute, then MULTI/EXEC the new
head, the appended row, the trim and the expiries; a concurrent writer to the same scope makes
EXEC fail and the update is retried on fresh state. Holds live in their own keys. The campaign
sketch is one HyperLogLog per template per 10-minute bucket; PFCOUNT over the last six gives
the distinct accounts of the hour.

Every key starts with `moat:v{FEATURE_SPEC_VERSION}.{layout}:`, the layout being a short hash of
the packed formats (ROW's dtype, the head, the blooms, the window). A release that changes any of
them reads and writes new keys, and the old ones expire with their TTL: old state is never
misread. Bytes of the wrong size under a current key are a fresh scope, with a warning.

Any Redis error raises StoreUnavailable, and the store then fails fast for `retry_s` seconds
(a simple circuit breaker) so a dead Redis costs no timeout per request.
"""

from __future__ import annotations

import hashlib
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import redis

from moat.models.feature_spec import BLOOM_WORDS, FEATURE_SPEC_VERSION, WINDOW
from moat.models.scope_window import ROW, ScopeState
from moat.models.state import CAMPAIGN_BUCKET_S, CAMPAIGN_BUCKETS, StateStore, StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)
_HEAD = struct.Struct("<qddi")  # total, ewma_1h, ewma_1d, bloom_count
_BLOOM_BYTES = BLOOM_WORDS * 8
_HEAD_BYTES = _HEAD.size + 2 * _BLOOM_BYTES  # the head, then the current and previous blooms
_HOLD = "{action}:{until}"


def state_version(row: np.dtype = ROW, head: str = _HEAD.format, bloom_words: int = BLOOM_WORDS, window: int = WINDOW, hold: str = _HOLD, spec: str = FEATURE_SPEC_VERSION) -> str:
    """`v{spec}.{layout}`: the layout hash changes with any packed format, so no one has to
    remember to bump it."""
    layout = repr((row.descr, head, bloom_words, window, hold)).encode()
    return f"v{spec}.{hashlib.sha256(layout).hexdigest()[:8]}"


STATE_VERSION = state_version()


class CorruptState(ValueError):
    """Stored bytes that are not of this layout."""


def encode_head(state: ScopeState) -> bytes:
    prev = state.bloom_prev if state.bloom_prev is not None else np.zeros(BLOOM_WORDS, dtype=np.uint64)
    return _HEAD.pack(state.total, state.ewma_1h, state.ewma_1d, state.bloom_count) + state.bloom_cur.tobytes() + prev.tobytes()


def decode_state(head: bytes | None, rows: list[bytes]) -> ScopeState:
    """The scope's state from its stored head and rows; CorruptState when they are not of this
    layout (checked before anything is read, so a bad blob is never half-used)."""
    if head is not None and len(head) != _HEAD_BYTES:
        raise CorruptState(f"head of {len(head)} bytes, expected {_HEAD_BYTES}")
    if len(rows) > WINDOW or any(len(r) != ROW.itemsize for r in rows):
        raise CorruptState(f"{len(rows)} rows of {sorted({len(r) for r in rows})} bytes, expected at most {WINDOW} of {ROW.itemsize}")
    state = ScopeState()
    if head is not None:
        state.total, state.ewma_1h, state.ewma_1d, state.bloom_count = _HEAD.unpack_from(head)
        o = _HEAD.size
        state.bloom_cur = np.frombuffer(head, dtype=np.uint64, count=BLOOM_WORDS, offset=o).copy()
        prev = np.frombuffer(head, dtype=np.uint64, count=BLOOM_WORDS, offset=o + _BLOOM_BYTES)
        state.bloom_prev = prev.copy() if prev.any() else None
    if rows:
        arr = np.frombuffer(b"".join(rows), dtype=ROW)
        state.rows = np.zeros(len(arr), dtype=ROW)
        state.rows[: len(arr)] = arr
        state.n = len(arr)
    return state


def decode_hold(value: bytes | None) -> tuple[int, float]:
    if value is None:
        return 0, 0.0
    try:
        action, until = value.decode().split(":", 1)
        return int(action), float(until)
    except ValueError:  # also UnicodeDecodeError
        log.warning("ignoring a malformed hold %r in redis", value[:40])
        return 0, 0.0


class RedisStore(StateStore):
    name = "redis"

    def __init__(self, url: str, ttl_s: float = 86400.0, timeout_s: float = 0.05, retry_s: float = 5.0, prefix: str = "moat", max_retries: int = 50) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl = max(int(ttl_s), 1)
        self.retry_s = retry_s
        self.prefix = f"{prefix}:{STATE_VERSION}"
        self.max_retries = max_retries
        self._down_until = 0.0

    def redis_key(self, kind: str, scope: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{scope}:{key}"

    def _guard(self) -> None:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("redis marked down after a recent error")

    def _fail(self, exc: Exception) -> StoreUnavailable:
        self._down_until = time.monotonic() + self.retry_s
        return StoreUnavailable(f"redis error: {exc}")

    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        self._guard()
        head_key, rows_key = self.redis_key("h", scope, key), self.redis_key("r", scope, key)
        try:
            with self.client.pipeline() as pipe:
                for _ in range(self.max_retries):
                    try:
                        pipe.watch(head_key)
                        head = pipe.get(head_key)
                        rows = pipe.lrange(rows_key, 0, -1)
                        try:
                            state, stale = decode_state(head, rows), False
                        except CorruptState as exc:
                            # Start the scope over, and drop its rows so the next read is clean.
                            log.warning("scope %s:%s in redis is not of layout %s (%s); starting it fresh", scope, key, STATE_VERSION, exc)
                            state, stale = ScopeState(), True
                        result = fn(state)
                        pipe.multi()
                        pipe.set(head_key, encode_head(state), ex=self.ttl)
                        if stale:
                            pipe.delete(rows_key)
                        pipe.rpush(rows_key, state.rows[state.n - 1].tobytes())
                        pipe.ltrim(rows_key, -WINDOW, -1)
                        pipe.expire(rows_key, self.ttl)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        # Another replica updated this scope: back off briefly, recompute on fresh state.
                        time.sleep(random.uniform(0, 0.002))
                        continue
                raise StoreUnavailable(f"scope {scope}:{key} kept changing under {self.max_retries} retries")
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def set_hold(self, scope: str, key: str, action: int, until: float) -> None:
        self._guard()
        try:
            self.client.set(self.redis_key("hold", scope, key), _HOLD.format(action=action, until=until), ex=self.ttl)
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        self._guard()
        try:
            values = self.client.mget([self.redis_key("hold", s, k) for s, k in scopes])
        except redis.RedisError as exc:
            raise self._fail(exc) from exc
        return [decode_hold(v) for v in values]

    def campaign(self, template: int, account: str, ts: float) -> int:
        self._guard()
        bucket = int(ts // CAMPAIGN_BUCKET_S)
        keys = [f"{self.prefix}:c:{template}:{b}" for b in range(bucket - CAMPAIGN_BUCKETS + 1, bucket + 1)]
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.pfadd(keys[-1], account)
            pipe.expire(keys[-1], CAMPAIGN_BUCKET_S * (CAMPAIGN_BUCKETS + 1))
            pipe.pfcount(*keys)
            return int(pipe.execute()[-1])
        except redis.RedisError as exc:
            raise self._fail(exc) from exc

    def size(self) -> int:
        """Keys held (heads, rows, holds and sketches): Redis does not count scopes cheaply."""
        try:
            return int(self.client.dbsize())
        except redis.RedisError:
            return -1

    def flush(self) -> None:
        """Delete this store's keys (tests and benchmarks)."""
        for k in self.client.scan_iter(f"{self.prefix}:*"):
            self.client.delete(k)

    def close(self) -> None:
        self.client.close()
