"""Action thresholds from per-account risk: the one rule training and operator calibration share.

An account is "ever blocked" (or ever acted on) when its highest risk over its requests reaches
the block (or throttle) threshold, so thresholds are upper quantiles of account maxima. Training
takes them on labelled validation benign accounts; `moat calibrate` takes them on an operator's
unlabelled traffic, after trimming the accounts that stand far out of the population (the few
attackers that real traffic holds), so that a handful of attackers cannot drag the thresholds
up to their own level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moat.models.bundle import Thresholds

# Floors: below these a model's risk carries too little evidence to act on, whatever the
# population looks like.
MIN_THROTTLE = 0.3
MIN_BLOCK = 0.5
# Tukey's "far out" fence, in logit space: accounts above Q3 + FENCE * IQR are not taken as
# part of the benign population when choosing thresholds on unlabelled traffic.
FENCE = 3.0
# Accounts within this many logits of a threshold are reported as "near" it: the ones that a
# small drift in traffic would move across.
NEAR_LOGITS = 0.5


@dataclass(frozen=True)
class ActionTargets:
    """The most any population share may ever reach each action."""

    block: float = 0.001
    perturb: float = 0.005
    action: float = 0.01

    def __post_init__(self) -> None:
        for name in ("block", "perturb", "action"):
            share = getattr(self, name)
            if not 0 <= share < 1:
                raise ValueError(f"target {name} share must lie in [0, 1), got {share}")
        if not self.block <= self.perturb <= self.action:
            raise ValueError(f"targets must satisfy block <= perturb <= action, got {self}")


def _above(sorted_risk: np.ndarray, share: float) -> float:
    """The lowest threshold that at most `share` of the accounts reach. With few accounts the
    quantile is the maximum; the threshold sits just above the highest risk that must stay below
    it, since false positives are the product's worst failure."""
    k = int(np.floor(share * len(sorted_risk)))  # accounts allowed at or above
    q = sorted_risk[-(k + 1)]
    return float(min(np.nextafter(q, 2.0) + 1e-6, 1.0001))


def choose_thresholds(account_risk: np.ndarray, targets: ActionTargets) -> Thresholds:
    """Thresholds so that at most each target share of these accounts ever reaches the action."""
    risk = np.sort(np.asarray(account_risk, dtype=np.float64))
    if len(risk) == 0:
        return Thresholds(throttle=0.5, perturb=0.8, block=0.95)
    throttle = max(_above(risk, targets.action), MIN_THROTTLE)
    perturb = max(_above(risk, targets.perturb), throttle)
    block = max(_above(risk, targets.block), perturb, MIN_BLOCK)
    return Thresholds(throttle=round(throttle, 6), perturb=round(perturb, 6), block=round(block, 6))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def population_mask(account_risk: np.ndarray, fence: float = FENCE) -> np.ndarray:
    """True for accounts inside the population's upper fence (Q3 + fence * IQR in logit space).

    Quantiles of the bulk barely move when a few percent of far-out accounts are added, so the
    fence, and the thresholds taken inside it, stay where the benign population puts them."""
    z = _logit(np.asarray(account_risk, dtype=np.float64))
    if len(z) < 4:
        return np.ones(len(z), dtype=bool)
    q1, q3 = np.percentile(z, [25, 75])
    return z <= q3 + fence * max(q3 - q1, 1e-3)


@dataclass(frozen=True)
class OperatorChoice:
    thresholds: Thresholds
    accounts: int
    trimmed: int  # accounts outside the fence, not used for the quantiles
    ever_blocked: float  # share of all accounts that the thresholds would ever block
    ever_acted: float  # ... ever throttle, perturb or block
    near: dict[str, int]  # accounts within NEAR_LOGITS of each threshold

    def report(self) -> dict[str, object]:
        return {
            "thresholds": self.thresholds.model_dump(),
            "accounts": self.accounts,
            "trimmed": self.trimmed,
            "ever_blocked_share": round(self.ever_blocked, 6),
            "ever_acted_share": round(self.ever_acted, 6),
            "near_threshold": self.near,
        }


def operator_thresholds(account_risk: np.ndarray, targets: ActionTargets, fence: float = FENCE) -> OperatorChoice:
    """Thresholds for unlabelled traffic: the target shares taken over the population inside
    the fence; the far-out accounts are left to be acted on."""
    risk = np.asarray(account_risk, dtype=np.float64)
    keep = population_mask(risk, fence)
    thr = choose_thresholds(risk[keep], targets)
    z = _logit(risk)
    near = {name: int((np.abs(z - _logit(np.array(t))) <= NEAR_LOGITS).sum()) for name, t in thr.model_dump().items()}
    n = max(len(risk), 1)
    return OperatorChoice(
        thresholds=thr,
        accounts=len(risk),
        trimmed=int((~keep).sum()),
        ever_blocked=float((risk >= thr.block).sum() / n),
        ever_acted=float((risk >= thr.throttle).sum() / n),
        near=near,
    )
