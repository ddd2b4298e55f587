"""The interface every state store implements, the exact campaign sketch, and the keyed hashes
that keep identifiers and prompt fingerprints out of stored state.

A store keeps one `ScopeState` per (scope, key) and a cross-account sketch of recent prompt
templates. Training runs featurisation through the same interface (with an unbounded memory
store), so the features a model is trained on are computed exactly as in serving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from moat.models.events import MAX_TS
from moat.models.scope_window import ScopeState
from moat.models.summary import Summary

T = TypeVar("T")
CAMPAIGN_BUCKET_S = 600  # campaign counts cover the current 10-minute bucket and the 5 before
CAMPAIGN_BUCKETS = 6
# Expired entries freed per update, from the least recently used end: O(1) amortised, and a
# burst of expiries is spread over the next requests instead of stalling one.
SWEEP_PER_UPDATE = 64
# The times a store keeps: events.py bounds `ts` at parse, and the stores clamp again so that no
# stored row can make later arithmetic overflow (ts -1e308 then 1e308 gave infinite gaps).
TS_MIN, TS_MAX = 0.0, MAX_TS  # the bounds events.py accepts (up to 9999-12-31)


class StoreUnavailable(RuntimeError):
    """A shared store cannot be reached; the scorer falls back to local state for the request."""


class Keyer:
    """A keyed hash (BLAKE2b in its MAC mode, the faster equivalent of an HMAC) under a
    per-deployment secret, for what a store writes at rest: scope keys become opaque names, and
    the prompt fingerprints (compared for equality only) are replaced by keyed ones, so a guessed
    prompt cannot be confirmed without the secret. SimHash is left as it is: features read it by
    Hamming distance, which a keyed hash would destroy, so it reveals how similar two stored
    prompts are, and nothing that confirms a guess without the rest of the row."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("MOAT_STATE_SECRET: use at least 16 bytes")
        self._key = hashlib.blake2b(secret, digest_size=32, person=b"moat-state").digest()

    def _mac(self, data: bytes, size: int, person: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._key, digest_size=size, person=person).digest()

    def ident(self, *parts: str) -> str:
        """An opaque, stable name for an identifier (128 bits, hex)."""
        return self._mac("\0".join(parts).encode("utf-8", "surrogatepass"), 16, b"ident").hex()

    def fingerprint(self, value: int) -> int:
        """A keyed 32-bit fingerprint; 0 (the 'none' of lb_hash) stays 0 and nothing else maps to it."""
        if value == 0:
            return 0
        return int.from_bytes(self._mac(value.to_bytes(8, "little"), 4, b"fingerprint"), "little") or 1

    def seal(self, s: Summary) -> Summary:
        fp = self.fingerprint
        return dataclasses.replace(s, shape=fp(s.shape), prompt_hash=fp(s.prompt_hash), lb_hash=fp(s.lb_hash), param_hash=fp(s.param_hash), client_fp=fp(s.client_fp))


class Visit(NamedTuple):
    """Everything one request touches in a store: its scopes in order (the account first) and
    its items in the two cross-account sketches (the sealed template and client fingerprint).
    A named tuple: built once per request, where a frozen dataclass's __init__ is 4x slower."""

    scopes: tuple[tuple[str, str], ...]
    account: str
    ts: float
    template: int
    client_fp: int


# begin(campaign, cohort) returns the function applied to each scope's state in order. A store
# that keeps a scope as a mirror of the request's account scope (MemoryStore) passes None for
# its state, after the account's: the request is in that state already, and the function
# answers for the scope from the account's result.
Begin = Callable[[int, int], Callable[[str, str, ScopeState | None], T]]


class StateStore(ABC):
    name: str = "abstract"

    @abstractmethod
    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        """Apply `fn` to the scope's state (new if unknown or expired) and keep the result."""

    @abstractmethod
    def set_holds(self, holds: Sequence[tuple[str, str, int, float]]) -> None:
        """Record a request's policy holds (hysteresis), each (scope, key, action level, until),
        at once: a shared store writes them in one exchange."""

    @abstractmethod
    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        """The held action level and its expiry for each (scope, key); (0, 0.0) when none."""

    @abstractmethod
    def campaign(self, template: int, account: str, ts: float) -> int:
        """Record that `account` sent `template` at `ts`; return the distinct accounts that sent
        it within the last hour, this one included."""

    @abstractmethod
    def cohort(self, fingerprint: int, account: str, ts: float) -> int:
        """Record that `account` sent a request with client `fingerprint` (user agent, endpoint,
        model and parameter habits) at `ts`; return the distinct accounts that sent with it within
        the last hour, this one included. Counted like `campaign`, in its own sketch."""

    @abstractmethod
    def size(self) -> int:
        """Number of scopes held."""

    def seal(self, s: Summary) -> Summary:
        """The request's summary as this store keeps it: with keyed fingerprints where the store
        writes them at rest. The featurizer calls it before any comparison with stored rows, so
        equal prompts stay equal and the features do not change."""
        return s

    def visit(self, v: Visit, begin: Begin[T]) -> tuple[int, int, list[T]]:
        """Record the request in both sketches, then apply `begin(campaign, cohort)` to each of
        its scopes' states in order and keep them; returns the two counts and each scope's result.

        A shared store may do this in one round trip, on the states it last wrote, and then run
        `begin` and its function more than once (again on fresh states, when another replica
        wrote in between): only the last run's results are returned and kept, and every run
        starts from `begin`, so a function may carry what it learnt from earlier scopes (the
        account's fingerprint) in its closure. This default is the call-by-call sequence."""
        campaign = self.campaign(v.template, v.account, v.ts)
        cohort = self.cohort(v.client_fp, v.account, v.ts)
        apply = begin(campaign, cohort)
        return campaign, cohort, [self.update(scope, key, v.ts, lambda state, scope=scope, key=key: apply(scope, key, state)) for scope, key in v.scopes]

    def close(self) -> None:
        pass


def clamp_ts(ts: float) -> float:
    if TS_MIN <= ts <= TS_MAX:  # the common case, returned as is (NaN fails both comparisons)
        return ts
    return min(max(ts, TS_MIN), TS_MAX) if not math.isnan(ts) else TS_MIN


def keep_monotonic(state: ScopeState, last: float | None) -> None:
    """A scope's clock never goes backwards: the row just appended is stored at no earlier time
    than the scope's previous last request (and within TS_MIN..TS_MAX), so a request stamped in
    the past cannot reorder the history that later gaps and rates are computed on."""
    if state.n:
        ts = state.rows["ts"]
        stored = float(ts[state.n - 1])
        kept = clamp_ts(max(stored, last if last is not None else TS_MIN))
        if kept != stored:  # in order and in range, as nearly every row is: nothing to write
            ts[state.n - 1] = kept


class CampaignSketch:
    """Distinct accounts per prompt template over the last hour, in 10-minute buckets (the same
    buckets the Redis store keeps as HyperLogLogs, so both count alike). Exact and bounded:
    templates are evicted least-recently-used, each keeps at most `max_accounts`, and templates
    that no account sent within the hour are swept as newer ones arrive."""

    def __init__(self, max_templates: int = 200_000, max_accounts: int = 2000) -> None:
        # Per template a plain dict, kept in order of each account's latest bucket by re-inserting
        # it (an OrderedDict entry costs twice a dict's, and there is one per account and template
        # in the hour). The oldest is the dict's first live entry: finding it skips the slots that
        # pops left, at most a few thousand (max_accounts), until the dict's next resize drops them:
        # a template at its cap, every call evicting, costs 6.5-9.5 us a call instead of 4.5-5
        # (benchmarks/bench_state_memory.py --sketch-speed).
        self._templates: OrderedDict[int, dict[str, int]] = OrderedDict()
        self.max_templates = max_templates
        self.max_accounts = max_accounts
        self._bucket = -1  # the latest bucket seen, one int object shared by its entries

    def observe(self, template: int, account: str, ts: float) -> int:
        bucket = int(clamp_ts(ts) // CAMPAIGN_BUCKET_S)
        # A bucket number is an int object of its own (28 bytes, a fifth of an entry); the
        # entries of one bucket share the latest one's.
        if bucket == self._bucket:
            bucket = self._bucket
        else:
            self._bucket = bucket
        seen = self._templates.get(template)
        if seen is None:
            seen = self._templates[template] = {}
            if len(self._templates) > self.max_templates:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(template)
        # One string per account across all templates, not one copy per entry.
        account = sys.intern(account)
        seen.pop(account, None)
        seen[account] = bucket
        # Accounts are kept in order of their latest bucket; expire from the oldest end.
        while seen and (next(iter(seen.values())) <= bucket - CAMPAIGN_BUCKETS or len(seen) > self.max_accounts):
            del seen[next(iter(seen))]
        self._sweep(bucket)
        return len(seen)

    def _sweep(self, bucket: int) -> None:
        """Drop templates whose newest account is out of the hour, from the least recently seen."""
        for _ in range(SWEEP_PER_UPDATE):
            oldest = next(iter(self._templates.values()), None)
            if oldest is None or next(reversed(oldest.values()), bucket) > bucket - CAMPAIGN_BUCKETS:
                return
            self._templates.popitem(last=False)

    def __len__(self) -> int:
        return len(self._templates)
