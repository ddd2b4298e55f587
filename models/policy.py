"""Risk to action, with hysteresis per scope and shadow mode."""

from __future__ import annotations

from dataclasses import dataclass

from moat.models.bundle import Thresholds

ACTIONS = ("allow", "throttle", "perturb", "block")
HOLD_FROM = 2  # perturb and block are held for the cool-down; throttle is not


def combined_risk(own: float, dependent: float, corroboration: float) -> float:
    """The risk a request acts on: its own scopes' (the account, a key that carries all of it),
    and a dependent scope's (an address block, a key carrying part of the account's traffic)
    only once the own risk corroborates it. Serving reports this, and training chooses the
    action thresholds on it, so thresholds and actions read the same number."""
    return max(own, dependent) if own >= corroboration else own


@dataclass(frozen=True)
class ScopeRisk:
    scope: str
    key: str
    risk: float
    hold_action: int
    hold_until: float
    dependent: bool = False  # acts only when the own scopes corroborate it (ScopeWindow.dependent)


@dataclass(frozen=True)
class Decision:
    action: str
    level: int
    would_be: str  # the action enforce mode would take (differs from `action` in shadow mode)
    scope: str  # the scope that drove the decision
    key: str
    risk: float
    new_holds: list[tuple[str, str, int, float]]  # (scope, key, level, until) to record


class Policy:
    """Maps each scope's risk to an action level and takes the highest.

    A dependent scope acts on a request only when the request's own scopes corroborate it (own
    risk at or above `corroboration`). An address block mixes parties: without corroboration one
    bad tenant behind a corporate NAT would throttle every colleague; with it, a sybil
    campaign's accounts, whose own traffic already looks risky, are still caught through the
    block they share. A key that carries only part of its account's traffic is dependent too:
    its account's window holds all of that traffic and more."""

    def __init__(self, thresholds: Thresholds, cooldown_s: float, shadow: bool, corroboration: float = 0.5) -> None:
        if not thresholds.throttle <= thresholds.perturb <= thresholds.block:
            raise ValueError(f"thresholds must satisfy throttle <= perturb <= block, got {thresholds}")
        self.t = thresholds
        self.cooldown_s = cooldown_s
        self.shadow = shadow
        self.corroboration = corroboration

    def level(self, risk: float) -> int:
        t = self.t
        return 3 if risk >= t.block else 2 if risk >= t.perturb else 1 if risk >= t.throttle else 0

    def decide(self, scopes: list[ScopeRisk], ts: float) -> Decision:
        best: tuple[int, float, ScopeRisk] | None = None
        holds = []
        own = max((s.risk for s in scopes if not s.dependent), default=0.0)
        for s in scopes:
            if s.dependent and own < self.corroboration:
                continue  # uncorroborated dependent evidence: neither acts nor starts a hold
            lvl = self.level(s.risk)
            if lvl >= HOLD_FROM:
                # (Re)start the hold: a scope at perturb or block stays there for the cool-down,
                # so a few benign-looking requests cannot flip it back to allow.
                if lvl > s.hold_action or ts + self.cooldown_s > s.hold_until:
                    holds.append((s.scope, s.key, max(lvl, s.hold_action if s.hold_until > ts else 0), ts + self.cooldown_s))
            if s.hold_until > ts:
                lvl = max(lvl, s.hold_action)
            cand = (lvl, s.risk, s)
            if best is None or cand[:2] > best[:2]:
                best = cand
        assert best is not None, "every request has the account scope, which is never dependent"
        lvl, _, s = best
        dependent = max((x.risk for x in scopes if x.dependent), default=0.0)
        risk = combined_risk(own, dependent, self.corroboration)
        action = ACTIONS[lvl]
        return Decision("allow" if self.shadow else action, 0 if self.shadow else lvl, action, s.scope, s.key, risk, holds)
