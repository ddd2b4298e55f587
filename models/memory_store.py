"""In-process state: LRU over scopes with an idle TTL and a hard bound on the number of scopes."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from moat.models.scope_window import ScopeState
from moat.models.state import SWEEP_PER_UPDATE, Begin, CampaignSketch, Keyer, StateStore, Visit, clamp_ts, keep_monotonic
from moat.models.summary import Summary

T = TypeVar("T")
# Holds of scopes pushed out by the `max_scopes` bound, kept until the scope returns. Without
# them an attacker who makes that many fresh scopes within a cool-down would shed its block with
# its history. Bounded too (least recently evicted first out): a few MB at most.
EVICTED_HOLDS = 65_536


@dataclass(slots=True)
class _Entry:
    last: float  # the scope's event clock: the latest event time it was updated at, never decreasing
    touched: float  # the store's clock when it was last updated
    state: ScopeState
    shared: bool = False  # `state` is the account scope's whose mirror this is (its rows carry that flag)
    mirrors: tuple[tuple[str, str], ...] = ()  # on an account scope: the scopes sharing its state
    hold_action: int = 0  # policy hysteresis: the action level held and until when
    hold_until: float = 0.0


class MemoryStore(StateStore):
    """Bounded by `max_scopes` (least recently used scope evicted first) and by `ttl_s`, an idle
    time on the store's own clock (`clock`, monotonic seconds), as Redis keys expire: a scope not
    updated for `ttl_s`, plus what was left of its hold, starts fresh, and such scopes are swept
    from memory a few per update, without waiting to be touched again. Event times never free
    state, so a caller's clock jump cannot wipe a scope or its hold.

    `max_scopes=None` and `ttl_s=None` give the unbounded store that training uses to featurise
    whole traces. `keyer` seals stored fingerprints (in memory this is optional: nothing is at
    rest).

    Mirrors are kept once (`visit`): a key or address block first seen in the same request as a
    new account holds exactly the account's requests for as long as only that account uses it
    and the account uses only it, so it shares the account's state instead of a copy (on
    dev-spread most address blocks and many keys: a third to a half less memory per account, a
    tenth less featurising). The first request that breaks the mirror (another account on the
    scope, the account without it, or an eviction or expiry that parts them) gives the scope its
    own copy of the history so far, with its own scope flag: every window is what separate
    states would give. Each scope is still an entry of its
    own for the bounds, the TTL and its hold. The store's clock is read once per request (with
    separate states, once per scope): a scope at the exact edge of its TTL expires with its
    request's other scopes."""

    name = "memory"

    def __init__(
        self,
        max_scopes: int | None = 1_000_000,
        ttl_s: float | None = 86400.0,
        max_templates: int = 200_000,
        max_accounts: int = 2000,
        keyer: Keyer | None = None,
        clock: Callable[[], float] = time.monotonic,
        share_mirrors: bool = True,
    ) -> None:
        self._scopes: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.max_scopes = max_scopes
        self.ttl_s = ttl_s
        self.sketch = CampaignSketch(max_templates=max_templates, max_accounts=max_accounts)
        self.cohorts = CampaignSketch(max_templates=max_templates, max_accounts=max_accounts)
        self.keyer = keyer
        self.clock = clock
        self.share_mirrors = share_mirrors
        self.evictions = 0  # scopes dropped by the max_scopes bound
        self._evicted_holds: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self.expired = 0  # scopes freed by the TTL sweep

    def _expired(self, entry: _Entry, now: float) -> bool:
        if self.ttl_s is None:
            return False
        held_for = max(entry.hold_until - entry.last, 0.0)  # the hold's remaining event time
        return now - entry.touched > self.ttl_s + held_for

    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        return self._update((scope, key), ts, fn, self.clock())[0]

    def _update(self, k: tuple[str, str], ts: float, fn: Callable[[ScopeState], T], now: float, staying: tuple[tuple[str, str], ...] = ()) -> tuple[T, _Entry, bool]:
        """Apply `fn` to scope `k`'s own state and keep it; its mirrors other than `staying` take
        their own copy first. Returns fn's result, the entry, and whether the scope was new."""
        entry = self._scopes.get(k)
        if entry is None:
            # One string per id, shared with the campaign sketch's entries.
            k = (k[0], sys.intern(k[1]))
        fresh = entry is None or self._expired(entry, now)
        if fresh:
            # A fresh scope, and the most recently used: an expired key must not keep its old,
            # first-to-evict position in the LRU order. Its old mirrors keep the old state, unchanged.
            self._scopes.pop(k, None)
            entry, last = self._revive(k, _Entry(clamp_ts(ts), now, ScopeState())), None
        else:
            self._scopes.move_to_end(k)
            last = entry.last
            if entry.shared:
                self._own(k, entry)
            for m in entry.mirrors:
                mirror = self._scopes.get(m)
                if m not in staying and mirror is not None and mirror.state is entry.state:
                    self._own(m, mirror)
            entry.mirrors = ()
        result = fn(entry.state)
        keep_monotonic(entry.state, last)
        entry.last = max(clamp_ts(ts), last if last is not None else entry.last)
        self._keep(k, entry, now)
        return result, entry, fresh

    def _keep(self, k: tuple[str, str], entry: _Entry, now: float) -> None:
        """Store `entry` as the most recently used scope, within the bounds."""
        entry.touched = now
        self._scopes[k] = entry
        if self.max_scopes is not None and len(self._scopes) > self.max_scopes:
            gone, old = self._scopes.popitem(last=False)
            self.evictions += 1
            if old.hold_until > old.last:  # held at its last request: maybe still running
                self._evicted_holds[gone] = (old.hold_action, old.hold_until)
                if len(self._evicted_holds) > EVICTED_HOLDS:
                    self._evicted_holds.popitem(last=False)
        self._sweep(now)

    def _revive(self, k: tuple[str, str], entry: _Entry) -> _Entry:
        """A scope starting fresh gets back the hold it had when the bound evicted it, if any (the
        policy reads it against the request's time, so one that ran out does nothing)."""
        held = self._evicted_holds.pop(k, None)
        if held is not None:
            entry.hold_action, entry.hold_until = held
        return entry

    @staticmethod
    def _own(k: tuple[str, str], entry: _Entry) -> None:
        """A mirror whose account moves on without it (or that another account uses): its own
        copy of the history it shared, with its own scope flag."""
        entry.state, entry.shared = entry.state.copy(scope=k[0]), False

    def visit(self, v: Visit, begin: Begin[T]) -> tuple[int, int, list[T]]:
        """As `StateStore.visit`, keeping mirrors once (see the class) unless `share_mirrors` is
        off: the caller's function gets None for a scope that shares the account's state (see
        `Begin`)."""
        if not self.share_mirrors:
            return super().visit(v, begin)
        campaign = self.campaign(v.template, v.account, v.ts)
        cohort = self.cohort(v.client_fp, v.account, v.ts)
        apply = begin(campaign, cohort)
        first, rest = v.scopes[0], v.scopes[1:]
        now = self.clock()
        result, account, fresh = self._update(first, v.ts, lambda state: apply(*first, state), now, staying=rest)
        out, mirrors = [result], []
        for k in rest:
            entry = self._scopes.get(k)
            live = entry is not None and not self._expired(entry, now)
            if live and entry.state is account.state:
                self._scopes.move_to_end(k)
            elif fresh and not live:
                # A new scope in a new account's first request: its mirror from the start.
                self._scopes.pop(k, None)
                k = (k[0], sys.intern(k[1]))
                entry = self._revive(k, _Entry(account.last, now, account.state, shared=True))
            else:
                out.append(self._update(k, v.ts, lambda state, k=k: apply(*k, state), now)[0])
                continue
            entry.last = account.last
            self._keep(k, entry, now)
            mirrors.append(k)
            out.append(apply(*k, None))
        account.mirrors = tuple(mirrors)
        return campaign, cohort, out

    def _sweep(self, now: float) -> None:
        """Free up to SWEEP_PER_UPDATE expired scopes from the least recently updated end, which
        is in order of `touched`: the first one not expired ends the sweep, unless it is only
        kept by its hold, which then goes to the back so it cannot stall the sweep."""
        if self.ttl_s is None:
            return
        # The usual case, decided without the loop: the least recently updated scope was
        # updated within the TTL, so nothing is expired yet.
        oldest = next(iter(self._scopes.values()), None)
        if oldest is None or now - oldest.touched <= self.ttl_s:
            return
        for _ in range(SWEEP_PER_UPDATE):
            oldest = next(iter(self._scopes.items()), None)
            if oldest is None:
                return
            k, entry = oldest
            if self._expired(entry, now):
                self._scopes.popitem(last=False)
                self.expired += 1
            elif now - entry.touched > self.ttl_s:
                self._scopes.move_to_end(k)
            else:
                return

    def set_holds(self, holds: Sequence[tuple[str, str, int, float]]) -> None:
        for scope, key, action, until in holds:
            entry = self._scopes.get((scope, key))
            if entry is not None:
                entry.hold_action, entry.hold_until = action, until

    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        out = []
        for k in scopes:
            entry = self._scopes.get(k)
            out.append((entry.hold_action, entry.hold_until) if entry is not None else (0, 0.0))
        return out

    def campaign(self, template: int, account: str, ts: float) -> int:
        return self.sketch.observe(template, account, ts)

    def cohort(self, fingerprint: int, account: str, ts: float) -> int:
        return self.cohorts.observe(fingerprint, account, ts)

    def seal(self, s: Summary) -> Summary:
        return self.keyer.seal(s) if self.keyer is not None else s

    def size(self) -> int:
        return len(self._scopes)
