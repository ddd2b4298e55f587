"""The interface every state store implements, and the exact campaign sketch.

A store keeps one `ScopeState` per (scope, key) and a cross-account sketch of recent prompt
templates. Training runs featurisation through the same interface (with an unbounded memory
store), so the features a model is trained on are computed exactly as in serving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from moat.models.scope_window import ScopeState

T = TypeVar("T")
CAMPAIGN_BUCKET_S = 600  # campaign counts cover the current 10-minute bucket and the 5 before
CAMPAIGN_BUCKETS = 6


class StoreUnavailable(RuntimeError):
    """A shared store cannot be reached; the scorer falls back to local state for the request."""


class StateStore(ABC):
    name: str = "abstract"

    @abstractmethod
    def update(self, scope: str, key: str, ts: float, fn: Callable[[ScopeState], T]) -> T:
        """Apply `fn` to the scope's state (new if unknown or expired) and keep the result."""

    @abstractmethod
    def set_hold(self, scope: str, key: str, action: int, until: float) -> None:
        """Record a policy hold (hysteresis) for the scope."""

    @abstractmethod
    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        """The held action level and its expiry for each (scope, key); (0, 0.0) when none."""

    @abstractmethod
    def campaign(self, template: int, account: str, ts: float) -> int:
        """Record that `account` sent `template` at `ts`; return the distinct accounts that sent
        it within the last hour, this one included."""

    @abstractmethod
    def size(self) -> int:
        """Number of scopes held."""

    def close(self) -> None:
        pass


class CampaignSketch:
    """Distinct accounts per prompt template over the last hour, in 10-minute buckets (the same
    buckets the Redis store keeps as HyperLogLogs, so both count alike). Exact and bounded:
    templates are evicted least-recently-used, and each keeps at most `max_accounts`."""

    def __init__(self, max_templates: int = 200_000, max_accounts: int = 2000) -> None:
        self._templates: OrderedDict[int, OrderedDict[str, int]] = OrderedDict()
        self.max_templates = max_templates
        self.max_accounts = max_accounts

    def observe(self, template: int, account: str, ts: float) -> int:
        bucket = int(ts // CAMPAIGN_BUCKET_S)
        seen = self._templates.get(template)
        if seen is None:
            seen = self._templates[template] = OrderedDict()
            if len(self._templates) > self.max_templates:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(template)
        seen.pop(account, None)
        seen[account] = bucket
        # Accounts are kept in order of their latest bucket; expire from the oldest end.
        while seen and (next(iter(seen.values())) <= bucket - CAMPAIGN_BUCKETS or len(seen) > self.max_accounts):
            seen.popitem(last=False)
        return len(seen)

    def __len__(self) -> int:
        return len(self._templates)
