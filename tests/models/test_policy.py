"""Risk to action: thresholds, scope choice, holds (hysteresis) and shadow mode."""

from __future__ import annotations

import pytest

from moat.models.bundle import Thresholds
from moat.models.policy import RISK_DECIMALS, Policy, ScopeRisk, combined_risk

T = Thresholds(throttle=0.5, perturb=0.8, block=0.95)


def s(scope: str, risk: float, hold: int = 0, until: float = 0.0, dependent: bool | None = None, floor: int = 0) -> ScopeRisk:
    """An address block is dependent (needs corroboration) unless a case says otherwise."""
    return ScopeRisk(scope, f"{scope}-key", risk, hold, until, scope == "ip_prefix" if dependent is None else dependent, floor)


# (case, scopes, ts, shadow, action, driving scope, new holds (scope, level))
CASES = [
    ("low risk allows", [s("account", 0.1)], 100.0, False, "allow", "account", []),
    ("throttle band", [s("account", 0.6)], 100.0, False, "throttle", "account", []),
    ("perturb starts a hold", [s("account", 0.85)], 100.0, False, "perturb", "account", [("account", 2)]),
    ("block starts a hold", [s("account", 0.99)], 100.0, False, "block", "account", [("account", 3)]),
    ("the riskiest scope drives", [s("account", 0.6), s("ip_prefix", 0.9)], 100.0, False, "perturb", "ip_prefix", [("ip_prefix", 2)]),
    ("uncorroborated address block is ignored", [s("account", 0.1), s("ip_prefix", 0.99)], 100.0, False, "allow", "account", []),
    ("key corroborates the address block, which raises it to perturb at most", [s("account", 0.1), s("api_key", 0.55), s("ip_prefix", 0.99)], 100.0, False, "perturb", "ip_prefix", [("ip_prefix", 2)]),
    ("a shared scope alone never blocks", [s("account", 0.7), s("ip_prefix", 0.999)], 100.0, False, "perturb", "ip_prefix", [("ip_prefix", 2)]),
    ("the account's own block still blocks beside a shared scope", [s("account", 0.97), s("ip_prefix", 0.99)], 100.0, False, "block", "account", [("account", 3), ("ip_prefix", 2)]),
    ("a held block on a shared scope acts as perturb at most", [s("account", 0.6), s("ip_prefix", 0.1, hold=3, until=200.0)], 100.0, False, "perturb", "ip_prefix", []),
    ("own risk below the throttle threshold never opens the gate", [s("account", 0.45), s("ip_prefix", 0.99)], 100.0, False, "allow", "account", []),
    ("uncorroborated hold on a block is ignored", [s("account", 0.1), s("ip_prefix", 0.1, hold=3, until=200.0)], 100.0, False, "allow", "account", []),
    ("partial key needs the account to corroborate", [s("account", 0.1), s("api_key", 0.99, dependent=True)], 100.0, False, "allow", "account", []),
    ("corroborated partial key acts, at most as perturb", [s("account", 0.6), s("api_key", 0.99, dependent=True)], 100.0, False, "perturb", "api_key", [("api_key", 2)]),
    ("hold keeps perturb despite low risk", [s("account", 0.1, hold=2, until=200.0)], 100.0, False, "perturb", "account", []),
    ("hold keeps block", [s("account", 0.6, hold=3, until=200.0)], 100.0, False, "block", "account", []),
    ("expired hold no longer applies", [s("account", 0.1, hold=3, until=50.0)], 100.0, False, "allow", "account", []),
    ("hold on another scope drives", [s("account", 0.1), s("api_key", 0.2, hold=2, until=500.0)], 100.0, False, "perturb", "api_key", []),
    ("shadow mode always allows", [s("account", 0.99)], 100.0, True, "allow", "account", [("account", 3)]),
    ("a signature throttles whatever the risk", [s("account", 0.1, floor=1)], 100.0, False, "throttle", "account", []),
    ("a signature never lowers the model's action", [s("account", 0.99, floor=1)], 100.0, False, "block", "account", [("account", 3)]),
    ("a signature on a dependent scope is ignored", [s("account", 0.1), s("ip_prefix", 0.1, floor=1)], 100.0, False, "allow", "account", []),
]


@pytest.mark.parametrize("case, scopes, ts, shadow, action, scope, holds", CASES, ids=[c[0] for c in CASES])
def test_policy(case, scopes, ts, shadow, action, scope, holds) -> None:
    d = Policy(T, cooldown_s=600, shadow=shadow).decide(scopes, ts)
    assert d.action == action
    assert d.scope == scope
    assert [(h[0], h[2]) for h in d.new_holds] == holds
    for h in d.new_holds:
        assert h[3] == ts + 600
    if shadow:
        assert d.would_be == "block"


# (case, requests as (ts, account risk), actions): holds carried from request to request, cool-down
# 600 s. A hold lasts its cool-down from the last request at its level or above.
SEQUENCES = [
    ("a block held through perturb-level traffic runs out, then perturb holds", [(0, 0.99), (300, 0.85), (700, 0.85), (1000, 0.85), (1700, 0.1)], ["block", "block", "perturb", "perturb", "allow"]),
    ("block-level traffic keeps the block", [(0, 0.99), (500, 0.99), (1000, 0.1), (1150, 0.1)], ["block", "block", "block", "allow"]),
    ("perturb-level traffic keeps a perturb hold", [(0, 0.85), (500, 0.85), (1000, 0.1), (1150, 0.1)], ["perturb", "perturb", "perturb", "allow"]),
    ("an escalation stamped earlier keeps the longer hold", [(1000, 0.85), (950, 0.99), (1575, 0.1), (1650, 0.1)], ["perturb", "block", "block", "allow"]),
]


@pytest.mark.parametrize("case, requests, actions", SEQUENCES, ids=[c[0] for c in SEQUENCES])
def test_holds_over_a_sequence(case: str, requests: list[tuple[float, float]], actions: list[str]) -> None:
    p = Policy(T, cooldown_s=600, shadow=False)
    hold = (0, 0.0)
    got = []
    for ts, risk in requests:
        d = p.decide([s("account", risk, *hold)], ts)
        hold = next(((level, until) for _, _, level, until in d.new_holds), hold)
        got.append(d.action)
    assert got == actions


# (case, thresholds, configured corroboration, effective gate)
GATES = [
    ("the throttle threshold is the floor of the gate", Thresholds(throttle=0.9, perturb=0.95, block=0.97), 0.5, 0.9),
    ("a stricter configured gate wins", Thresholds(throttle=0.3, perturb=0.8, block=0.95), 0.6, 0.6),
]


@pytest.mark.parametrize("case, thresholds, configured, gate", GATES, ids=[g[0] for g in GATES])
def test_the_gate_opens_only_for_accounts_acted_on(case: str, thresholds: Thresholds, configured: float, gate: float) -> None:
    p = Policy(thresholds, cooldown_s=600, shadow=False, corroboration=configured)
    assert p.corroboration == gate
    below = p.decide([s("account", gate - 0.01), s("ip_prefix", 0.999)], 100.0)
    assert below.scope == "account" and below.risk == gate - 0.01
    at = p.decide([s("account", gate), s("ip_prefix", 0.999)], 100.0)
    assert at.scope == "ip_prefix" and at.action == "perturb" and at.risk < thresholds.block


@pytest.mark.parametrize("block", [0.95, 0.992148, 0.99214856])
def test_a_shared_scope_reports_a_risk_below_the_block_threshold(block: float) -> None:
    """As reported (rounded), too: the answer must not read as a block it is not."""
    d = Policy(Thresholds(throttle=0.5, perturb=0.8, block=block), cooldown_s=600, shadow=False).decide([s("account", 0.6), s("ip_prefix", 0.9999)], 100.0)
    assert d.action == "perturb" and round(d.risk, RISK_DECIMALS) < block


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="throttle <= perturb <= block"):
        Policy(Thresholds(throttle=0.9, perturb=0.5, block=0.95), 60, False)


# (case, own risk, shared risk, corroboration, combined)
COMBINED = [
    ("own risk alone", 0.3, 0.0, 0.5, 0.3),
    ("uncorroborated shared risk is left out", 0.3, 0.99, 0.5, 0.3),
    ("corroborated shared risk counts", 0.6, 0.99, 0.5, 0.99),
    ("own risk above the shared", 0.9, 0.7, 0.5, 0.9),
    ("corroboration 0 is a plain max", 0.01, 0.8, 0.0, 0.8),
    ("exactly at the corroboration level counts", 0.5, 0.8, 0.5, 0.8),
]

# (case, own, shared, corroboration, ceiling, combined)
CEILING = [
    ("shared risk above the ceiling is cut to it", 0.6, 0.99, 0.5, 0.9, 0.9),
    ("shared risk below the ceiling is kept", 0.6, 0.8, 0.5, 0.9, 0.8),
    ("the ceiling never lowers the own risk", 0.97, 0.99, 0.5, 0.9, 0.97),
]


@pytest.mark.parametrize("case, own, shared, corroboration, ceiling, expected", CEILING, ids=[c[0] for c in CEILING])
def test_shared_risk_stays_under_the_ceiling(case: str, own: float, shared: float, corroboration: float, ceiling: float, expected: float) -> None:
    assert combined_risk(own, shared, corroboration, ceiling) == expected


@pytest.mark.parametrize("case, own, shared, corroboration, expected", COMBINED, ids=[c[0] for c in COMBINED])
def test_combined_risk(case: str, own: float, shared: float, corroboration: float, expected: float) -> None:
    assert combined_risk(own, shared, corroboration) == expected


# (case, scopes, reported risk): the reported risk is the one the action was taken on.
REPORTED = [
    ("uncorroborated block does not raise the risk", [s("account", 0.1), s("ip_prefix", 0.99)], 0.1),
    ("corroborated block does, up to one reported unit below the block threshold", [s("account", 0.6), s("ip_prefix", 0.99)], 0.95 - 1e-6),
    ("corroborated block under the block threshold is reported as is", [s("account", 0.6), s("ip_prefix", 0.9)], 0.9),
    ("the key's own risk counts", [s("account", 0.1), s("api_key", 0.7)], 0.7),
    ("a skipped block (not computed) changes nothing", [s("account", 0.2), s("api_key", 0.3)], 0.3),
]


@pytest.mark.parametrize("case, scopes, risk", REPORTED, ids=[c[0] for c in REPORTED])
def test_reported_risk_follows_the_policy(case: str, scopes: list[ScopeRisk], risk: float) -> None:
    assert Policy(T, cooldown_s=600, shadow=False).decide(scopes, 100.0).risk == risk
