"""Risk to action, with hysteresis per scope and shadow mode."""

from __future__ import annotations

from typing import NamedTuple

from moat.models.bundle import Thresholds

ACTIONS = ("allow", "throttle", "perturb", "block")
HOLD_FROM = 2  # perturb and block are held for the cool-down; throttle is not
# The highest action a dependent scope can cause. An address block or a shared key mixes
# parties: it is evidence about a place or a cohort, not about the person, so on its own it may
# slow or degrade an account that already looks wrong, and never cut it off.
DEPENDENT_MAX_LEVEL = 2
RISK_DECIMALS = 6  # the precision of a reported risk (Score.risk)


def combined_risk(own: float, dependent: float, corroboration: float, ceiling: float = 1.0) -> float:
    """The risk a request acts on: its own scopes' (the account, a key that carries all of it),
    and a dependent scope's (an address block, a key carrying part of the account's traffic)
    only once the own risk corroborates it, and then never above `ceiling` (the highest risk
    below the block threshold: shared evidence may raise an account to perturb, never to
    block). Serving reports this, and thresholds are chosen on it, so thresholds and actions
    read the same number."""
    return max(own, min(dependent, ceiling)) if own >= corroboration else own


class ScopeRisk(NamedTuple):
    """One scored scope of a request. A named tuple: three are built per request, and a frozen
    dataclass's __init__ cost several times a tuple's."""

    scope: str
    key: str
    risk: float
    hold_action: int
    hold_until: float
    dependent: bool = False  # acts only when the own scopes corroborate it (ScopeWindow.dependent)
    floor: int = 0  # the lowest level a signature demands of this scope (own scopes only)


class Decision(NamedTuple):
    """The policy's answer for one request (a named tuple, as ScopeRisk)."""

    action: str
    level: int
    would_be: str  # the action enforce mode would take (differs from `action` in shadow mode)
    scope: str  # the scope that drove the decision
    key: str
    risk: float
    new_holds: list[tuple[str, str, int, float]]  # (scope, key, level, until) to record


class Policy:
    """Maps each scope's risk to an action level and takes the highest.

    A dependent scope acts on a request only when the request's own scopes corroborate it: own
    risk at the configured `corroboration` and at least at the throttle threshold, i.e. the
    account is already acted on by its own traffic. Then it raises the action at most to
    perturb (DEPENDENT_MAX_LEVEL). On real traffic most chat users' own risk sits well above a
    fixed 0.5, so a fixed gate let one bad tenant behind a carrier NAT throttle and block its
    neighbours; tied to the throttle threshold, the gate opens only for accounts whose own
    traffic already crossed the line the operator calibrated. A sybil campaign's accounts,
    whose own traffic looks risky, are still escalated through the block or key they share."""

    def __init__(self, thresholds: Thresholds, cooldown_s: float, shadow: bool, corroboration: float = 0.5) -> None:
        if not thresholds.throttle <= thresholds.perturb <= thresholds.block:
            raise ValueError(f"thresholds must satisfy throttle <= perturb <= block, got {thresholds}")
        self.t = thresholds
        self.cooldown_s = cooldown_s
        self.shadow = shadow
        self.corroboration = max(corroboration, thresholds.throttle)
        # The highest risk a dependent scope can report: below the block threshold by one unit
        # of a reported risk, so that rounding cannot report a perturb as the block threshold.
        self.dependent_ceiling = max(thresholds.block - 10.0**-RISK_DECIMALS, 0.0)

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
            cap = DEPENDENT_MAX_LEVEL if s.dependent else len(ACTIONS) - 1
            lvl = max(min(self.level(s.risk), cap), 0 if s.dependent else s.floor)
            held = min(s.hold_action, cap) if s.hold_until > ts else 0
            if lvl >= HOLD_FROM and lvl >= held:
                # (Re)start the hold: a scope at perturb or block stays at least there for the
                # cool-down, so a few benign-looking requests cannot flip it back to allow. A
                # request below a running hold's level leaves that hold to run out: re-arming it
                # kept a scope blocked for as long as its traffic merely perturbed. A hold never
                # ends earlier than one already running (a request stamped a little earlier).
                until = max(ts + self.cooldown_s, s.hold_until)
                if lvl > held or until > s.hold_until:
                    holds.append((s.scope, s.key, lvl, until))
            lvl = max(lvl, held)
            cand = (lvl, s.risk, s)
            if best is None or cand[:2] > best[:2]:
                best = cand
        assert best is not None, "every request has the account scope, which is never dependent"
        lvl, _, s = best
        dependent = max((x.risk for x in scopes if x.dependent), default=0.0)
        risk = combined_risk(own, dependent, self.corroboration, self.dependent_ceiling)
        action = ACTIONS[lvl]
        return Decision("allow" if self.shadow else action, 0 if self.shadow else lvl, action, s.scope, s.key, risk, holds)
