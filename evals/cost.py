"""The attacker cost model: an estimate of what a clean answer costs with Moat against without it,
for an open-loop attacker.

Open loop: the trace is replayed as recorded, so the attacker does not react to Moat's actions.
An attacker who slows down, spreads over more accounts or backs off when throttled may pay less,
so the estimated cost multiplier is no lower bound: it can overstate what Moat costs an adaptive
attacker. The parameters are settings (MOAT_COST_* environment variables).

- Every request sent costs `price_per_query`, answered or not.
- `allow` gives a clean answer. `throttle` gives a clean answer late: it costs
  `throttle_penalty` extra queries' worth (retries under 429s, idle workers). `perturb` gives a
  degraded answer worth nothing to a copier. `block` gives nothing.
- Each account the trace uses costs `account_cost`, with Moat or without. An open-loop attacker
  keeps sending on an account Moat blocks (the trace goes on as recorded), so a block costs it
  the answers, not a new account: charging for a replacement account that never sends a
  request would count the same block twice.
- Without Moat the provider's own fixed limit still applies: requests beyond
  `rate_limit_per_min` per account-minute are refused (they count as sent, not as answers).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_settings import BaseSettings, SettingsConfigDict


class CostModel(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_COST_")

    price_per_query: float = 0.002
    account_cost: float = 5.0
    throttle_penalty: float = 1.0
    rate_limit_per_min: int = 600


@dataclass
class AttackOutcome:
    sent: int = 0
    allowed: int = 0
    throttled: int = 0
    perturbed: int = 0
    blocked: int = 0
    accounts: int = 0
    rate_limited: int = 0  # refused by the fixed limit in the no-Moat world

    def add(self, other: "AttackOutcome") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


def cost_without_moat(o: AttackOutcome, m: CostModel) -> tuple[float, float]:
    """(total cost, clean answers) when only the fixed rate limit stands in the way."""
    cost = o.sent * m.price_per_query + o.accounts * m.account_cost
    return cost, float(o.sent - o.rate_limited)


def cost_with_moat(o: AttackOutcome, m: CostModel) -> tuple[float, float]:
    cost = o.sent * m.price_per_query + o.accounts * m.account_cost + o.throttled * m.throttle_penalty * m.price_per_query
    return cost, float(o.allowed + o.throttled)


def cost_multiplier(o: AttackOutcome, m: CostModel) -> float:
    """The estimated cost multiplier (open-loop attacker): cost per clean answer with Moat divided
    by cost per clean answer without it, for traffic that does not react to Moat."""
    c0, a0 = cost_without_moat(o, m)
    c1, a1 = cost_with_moat(o, m)
    if a0 <= 0:
        return float("nan")
    if a1 <= 0:
        return float("inf")
    return (c1 / a1) / (c0 / a0)
