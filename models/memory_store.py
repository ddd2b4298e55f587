"""In-process state: LRU over scopes with an idle TTL and a hard bound on the number of scopes."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from moat.models.scope_window import ScopeState
from moat.models.state import SWEEP_PER_UPDATE, CampaignSketch, Keyer, StateStore, clamp_ts, keep_monotonic
from moat.models.summary import Summary

T = TypeVar("T")


@dataclass(slots=True)
class _Entry:
    last: float  # the scope's event clock: the latest event time it was updated at, never decreasing
    touched: float  # the store's clock when it was last updated
    state: ScopeState


class MemoryStore(StateStore):
    """Bounded by `max_scopes` (least recently used scope evicted first) and by `ttl_s`, an idle
    time on the store's own clock (`clock`, monotonic seconds), as Redis keys expire: a scope not
    updated for `ttl_s`, plus what was left of its hold, starts fresh, and such scopes are swept
    from memory a few per update, without waiting to be touched again. Event times never free
    state, so a caller's clock jump cannot wipe a scope or its hold.

    `max_scopes=None` and `ttl_s=None` give the unbounded store that training uses to featurise
    whole traces. `keyer` seals stored fingerprints (in memory this is optional: nothing is at
    rest)."""

    name = "memory"

    def __init__(
        self,
        max_scopes: int | None = 1_000_000,
        ttl_s: float | None = 86400.0,
        max_templates: int = 200_000,
        max_accounts: int = 2000,
        keyer: Keyer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scopes: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.max_scopes = max_scopes
        self.ttl_s = ttl_s
        self.sketch = CampaignSketch(max_templates=max_templates, max_accounts=max_accounts)
        self.cohorts = CampaignSketch(max_templates=max_templates, max_accounts=max_accounts)
        self.keyer = keyer
        self.clock = clock
        self.evictions = 0  # scopes dropped by the max_scopes bound
        self.expired = 0  # scopes freed by the TTL sweep

    def _expired(self, entry: _Entry, now: float) -> bool:
        if self.ttl_s is None:
            return False
        held_for = max(entry.state.hold_until - entry.last, 0.0)  # the hold's remaining event time
        return now - entry.touched > self.ttl_s + held_for

    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        k = (scope, key)
        now = self.clock()
        entry = self._scopes.get(k)
        if entry is None:
            # One string per id, shared with the campaign sketch's entries.
            k = (scope, sys.intern(key))
        if entry is None or self._expired(entry, now):
            # A fresh scope, and the most recently used: an expired key must not keep its old,
            # first-to-evict position in the LRU order.
            self._scopes.pop(k, None)
            entry, last = _Entry(clamp_ts(ts), now, ScopeState()), None
        else:
            self._scopes.move_to_end(k)
            last = entry.last
        result = fn(entry.state)
        keep_monotonic(entry.state, last)
        entry.last = max(clamp_ts(ts), last if last is not None else entry.last)
        entry.touched = now
        self._scopes[k] = entry
        if self.max_scopes is not None and len(self._scopes) > self.max_scopes:
            self._scopes.popitem(last=False)
            self.evictions += 1
        self._sweep(now)
        return result

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

    def set_hold(self, scope: str, key: str, action: int, until: float) -> None:
        entry = self._scopes.get((scope, key))
        if entry is not None:
            entry.state.hold_action, entry.state.hold_until = action, until

    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        out = []
        for k in scopes:
            entry = self._scopes.get(k)
            out.append((entry.state.hold_action, entry.state.hold_until) if entry is not None else (0, 0.0))
        return out

    def campaign(self, template: int, account: str, ts: float) -> int:
        return self.sketch.observe(template, account, ts)

    def cohort(self, fingerprint: int, account: str, ts: float) -> int:
        return self.cohorts.observe(fingerprint, account, ts)

    def seal(self, s: Summary) -> Summary:
        return self.keyer.seal(s) if self.keyer is not None else s

    def size(self) -> int:
        return len(self._scopes)
