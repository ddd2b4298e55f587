"""In-process state: LRU over scopes with a TTL and a hard bound on the number of scopes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from moat.models.scope_window import ScopeState
from moat.models.state import CampaignSketch, StateStore

T = TypeVar("T")


class MemoryStore(StateStore):
    """Bounded by `max_scopes` (least recently used scope evicted first) and by `ttl_s` (a scope
    idle longer starts fresh). `max_scopes=None` and `ttl_s=None` give the unbounded store that
    training uses to featurise whole traces."""

    name = "memory"

    def __init__(self, max_scopes: int | None = 1_000_000, ttl_s: float | None = 86400.0, max_templates: int = 200_000) -> None:
        self._scopes: OrderedDict[tuple[str, str], tuple[float, ScopeState]] = OrderedDict()
        self.max_scopes = max_scopes
        self.ttl_s = ttl_s
        self.sketch = CampaignSketch(max_templates=max_templates)
        self.evictions = 0

    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        k = (scope, key)
        entry = self._scopes.get(k)
        if entry is None or (self.ttl_s is not None and ts - entry[0] > self.ttl_s):
            state = ScopeState()
        else:
            state = entry[1]
            self._scopes.move_to_end(k)
        result = fn(state)
        self._scopes[k] = (ts, state)
        if self.max_scopes is not None and len(self._scopes) > self.max_scopes:
            self._scopes.popitem(last=False)
            self.evictions += 1
        return result

    def set_hold(self, scope: str, key: str, action: int, until: float) -> None:
        entry = self._scopes.get((scope, key))
        if entry is not None:
            entry[1].hold_action, entry[1].hold_until = action, until

    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        out = []
        for k in scopes:
            entry = self._scopes.get(k)
            out.append((entry[1].hold_action, entry[1].hold_until) if entry is not None else (0, 0.0))
        return out

    def campaign(self, template: int, account: str, ts: float) -> int:
        return self.sketch.observe(template, account, ts)

    def size(self) -> int:
        return len(self._scopes)
