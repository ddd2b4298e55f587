"""Action thresholds from per-account risk: the one rule training and operator calibration share.

An account is "ever blocked" (or ever acted on) when its highest risk over its requests reaches
the block (or throttle) threshold, so thresholds are upper quantiles of account maxima. Training
takes them on labelled validation benign accounts; `moat calibrate` takes them on an operator's
unlabelled traffic, after trimming the accounts that stand far out of the population (the few
attackers that real traffic holds) and a separated cluster at the top (a campaign's many
accounts, which score alike), so that attackers in the sample cannot drag the thresholds up to
their own level.
"""

from __future__ import annotations

import math
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
# A separated top cluster (see top_cluster_start): histogram bins of this width in logits; the
# cluster holds at most this share of the accounts (above it, the "attackers" are the
# population); its valley has at most VALLEY x the cluster's peak bin, and the peak at least
# PEAK x the densest of the SHOULDER_BINS bins below the valley.
CLUSTER_BIN = 0.25
CLUSTER_MAX_SHARE = 0.4
CLUSTER_MIN_ACCOUNTS = 5
VALLEY = 0.2
PEAK = 2.0
SHOULDER_BINS = 4
# Extreme quantiles of a few hundred accounts are the sample's maximum and move with it: where
# fewer than TAIL_MIN_ABOVE accounts would lie above a target, the threshold comes from an
# exponential tail (peaks over threshold, in logit space) fitted to the top TAIL_SHARE.
TAIL_MIN_ABOVE = 10
TAIL_SHARE = 0.1
# A fence-trimmed account goes back into the population when the population's own tail makes
# it plausible: an exponential tail in logits fitted to the top TAIL_SHARE (at least
# TAIL_MIN_FIT accounts) of the accounts inside the fence, corrected for the fence having cut it
# short. Going up from the lowest trimmed account, the m trimmed accounts at or above it go
# back as long as the tail gives m or more that high a probability of at least TAIL_PLAUSIBLE
# divided by the number of trimmed accounts.
# The fence alone, on a hundred benign accounts, cut the top one (1 logit above the next) and
# set the thresholds below it; counting every trimmed account above, from one fit, keeps a
# spread group of attackers out, where testing each alone and refitting put them back one by one.
TAIL_PLAUSIBLE = 0.05
TAIL_MIN_FIT = 5
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
    """Thresholds so that at most each target share of these accounts ever reaches the action:
    training's on validation benign accounts, `moat calibrate`'s on an operator's population.

    Rare quantiles come from the tail fit (`tail_threshold`), never below the sample's own: a
    few hundred accounts' own 0.1% quantile is their maximum, which put all three thresholds
    among the top four accounts, within a hair of each other, so an account that crossed the
    first soon crossed the last."""
    risk = np.sort(np.asarray(account_risk, dtype=np.float64))
    if len(risk) == 0:
        return Thresholds(throttle=0.5, perturb=0.8, block=0.95)
    q = tail_threshold
    throttle = max(q(risk, targets.action), MIN_THROTTLE)
    perturb = max(q(risk, targets.perturb), throttle)
    block = max(q(risk, targets.block), perturb, MIN_BLOCK)
    return Thresholds(throttle=round(throttle, 6), perturb=round(perturb, 6), block=round(block, 6))


def _logit(p: np.ndarray) -> np.ndarray:
    # Fine enough that a saturating model's top accounts stay apart (at 1e-6 they tied, which
    # made a "cluster" and a zero tail out of nothing), coarse enough for float64 (1 - 1e-12).
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _fence_logit(z: np.ndarray, fence: float) -> float:
    q1, q3 = np.percentile(z, [25, 75])
    return float(q3 + fence * max(q3 - q1, 1e-3))


def population_mask(account_risk: np.ndarray, fence: float = FENCE) -> np.ndarray:
    """True for accounts inside the population's upper fence (Q3 + fence * IQR in logit space).

    Quantiles of the bulk barely move when a few percent of far-out accounts are added, so the
    fence, and the thresholds taken inside it, stay where the benign population puts them."""
    z = _logit(np.asarray(account_risk, dtype=np.float64))
    if len(z) < 4:
        return np.ones(len(z), dtype=bool)
    return z <= _fence_logit(z, fence)


def top_cluster_start(account_risk: np.ndarray) -> float | None:
    """The logit where a separated cluster of accounts at the top of the population starts, or
    None. A campaign run over many accounts by one script gives those accounts nearly the same
    risk: a narrow peak above the benign bulk, with a valley between them. Benign traffic falls
    off smoothly instead (its top bins are no denser than its bulk), so nothing is cut there.
    Measured on the unlabelled operator sample calib-spread: 159 of 743 accounts within 0.4
    logits at the top, above a valley of 5-6 accounts per bin; a fence on the spread of the
    whole population (Tukey's) sits far above them and trims none."""
    risk = np.asarray(account_risk, dtype=np.float64)
    z = np.sort(_logit(risk[np.isfinite(risk)]))
    n = len(z)
    if n < 50 or z[-1] - z[0] < 2 * CLUSTER_BIN:
        return None
    edges = np.arange(z[0], z[-1] + CLUSTER_BIN, CLUSTER_BIN)
    counts, edges = np.histogram(z, bins=edges)
    median = float(np.median(z))
    above = np.cumsum(counts[::-1])[::-1]  # accounts in bin i and above
    best: tuple[int, int] | None = None  # (valley count, bin)
    for v in range(1, len(counts) - 1):
        if edges[v] <= median:
            continue
        top = int(above[v + 1])
        if not CLUSTER_MIN_ACCOUNTS <= top <= CLUSTER_MAX_SHARE * n:
            continue
        peak = int(counts[v + 1 :].max())
        # The bulk's tail just below the valley: a falling tail is never denser above than here.
        shoulder = int(counts[max(v - SHOULDER_BINS, 0) : v].max())
        # Three Poisson standard deviations on top, so that a lumpy tail of few accounts is no cluster.
        if counts[v] <= VALLEY * peak and peak >= PEAK * max(shoulder, 1) + 3 * math.sqrt(max(shoulder, 1)):
            if best is None or counts[v] < best[0] or (counts[v] == best[0] and v > best[1]):
                best = (int(counts[v]), v)
    return None if best is None else float(edges[best[1] + 1])


@dataclass(frozen=True)
class OperatorChoice:
    thresholds: Thresholds
    accounts: int
    trimmed: int  # accounts outside the fence or in a separated top cluster, not used for the quantiles
    ever_blocked: float  # share of all accounts that the thresholds would ever block
    ever_acted: float  # ... ever throttle, perturb or block
    near: dict[str, int]  # accounts within NEAR_LOGITS of each threshold
    cluster: int = 0  # of the trimmed, the accounts in a separated top cluster

    def report(self) -> dict[str, object]:
        return {
            "thresholds": self.thresholds.model_dump(),
            "accounts": self.accounts,
            "trimmed": self.trimmed,
            "top_cluster": self.cluster,
            "ever_blocked_share": round(self.ever_blocked, 6),
            "ever_acted_share": round(self.ever_acted, 6),
            "near_threshold": self.near,
        }


def _at_least(m: int, expected: float) -> float:
    """P(N >= m) for a Poisson count N with this expectation, where m lies above it; at or below
    the expectation 1.0 (the true value is about 0.5 or more, far above any level the walk tests
    at). Summed upwards from the m-th term in logs: no exp(-expected) to underflow, and about
    sqrt(expected) terms instead of m."""
    if m <= expected:
        return 1.0
    if expected <= 0:
        return 0.0
    term = math.exp(-expected + m * math.log(expected) - math.lgamma(m + 1))
    total, k = 0.0, m
    while term > 1e-17 * total or total == 0.0:
        total += term
        k += 1
        term *= expected / k
        if term == 0.0:
            break
    return min(total, 1.0)


def truncated_exp_scale(excess: np.ndarray, limit: float) -> float:
    """Maximum-likelihood scale of an exponential seen only below `limit` (excesses over the
    tail's start, cut at the fence): their plain mean underestimates it, since the fence took
    the largest. Solves mean = b - limit / (exp(limit / b) - 1), which rises with b to limit/2."""
    mean = float(np.mean(excess))
    if limit <= 0 or mean <= 0:
        return max(mean, 1e-6)
    if mean >= 0.999 * limit / 2:
        # Flat up to the fence: the correction has no finite answer, and on a hundred accounts
        # (ten in the tail) this happens by chance; a scale of 10 x limit put back nearly every
        # trimmed account, attackers included. The plain mean is the safer guess.
        return mean
    lo, hi = 1e-6, 10.0 * limit
    for _ in range(60):
        b = (lo + hi) / 2
        cut = limit / b
        f = b - (limit / math.expm1(cut) if cut < 700 else 0.0) - mean
        lo, hi = (b, hi) if f < 0 else (lo, b)
    return (lo + hi) / 2


def within_the_tail(z: np.ndarray, keep: np.ndarray, trimmed: np.ndarray, fence_z: float) -> np.ndarray:
    """`keep` with the trimmed accounts (logits `z`, above the fence at `fence_z`) that the kept
    population's own tail accounts for put back, lowest first; the first that fails stops the
    walk, and it and everything above stay out."""
    keep = keep.copy()
    zk = np.sort(z[keep])
    tail = max(int(np.floor(TAIL_SHARE * len(zk))), TAIL_MIN_FIT)
    if len(zk) <= tail or not trimmed.any():
        return keep
    u = float(zk[-tail - 1])
    scale = max(truncated_exp_scale(zk[-tail:] - u, fence_z - u), 1e-6)
    order = np.flatnonzero(trimmed)
    order = order[np.argsort(z[order], kind="stable")]
    # One test per trimmed account: Bonferroni, or a plain benign tail would stop the walk
    # somewhere in most samples, by chance.
    level = TAIL_PLAUSIBLE / len(order)
    # The tail's accounts are the kept ones above u and, were they benign, every trimmed one.
    above_u = tail + len(order)
    for j, i in enumerate(order):
        # m trimmed accounts at or above this one's logit, this one included: a count taken at
        # a point the data chose, which leans towards trimming; the Bonferroni level and the
        # trimmed accounts' share of the tail lean back.
        expected = above_u * math.exp(-(float(z[i]) - u) / scale)
        if _at_least(len(order) - j, expected) < level:
            break
        keep[i] = True
    return keep


def tail_threshold(population_risk: np.ndarray, share: float) -> float:
    """The risk that at most `share` of accounts like these would reach: the empirical quantile
    where at least TAIL_MIN_ABOVE accounts lie above it, else the exponential tail fitted to
    the top TAIL_SHARE (generalised Pareto with shape 0: z_q = u + mean excess x ln(TAIL_SHARE /
    share)). A new day's traffic then does not cross a threshold set at one sample's maximum."""
    risk = np.sort(np.asarray(population_risk, dtype=np.float64))
    z = _logit(risk)
    n = len(z)
    k = int(np.floor(share * n))
    tail = int(np.floor(TAIL_SHARE * n))
    empirical = _above(risk, share)
    if k >= TAIL_MIN_ABOVE or tail < TAIL_MIN_ABOVE or share <= 0:
        return empirical
    u = z[-tail - 1]
    zq = u + float(np.mean(z[-tail:] - u)) * math.log(TAIL_SHARE / share)
    # Never below the sample's own quantile: a tail of tied accounts has no excess, and the fit
    # would put the threshold on them.
    return max(float(1.0 / (1.0 + math.exp(-zq))), empirical)


def operator_thresholds(account_risk: np.ndarray, targets: ActionTargets, fence: float = FENCE) -> OperatorChoice:
    """Thresholds for unlabelled traffic: the target shares taken over the population inside
    the fence (or beyond it but within its own tail) and below a separated top cluster; the
    trimmed accounts are left to be acted on."""
    risk = np.asarray(account_risk, dtype=np.float64)
    z = _logit(risk)
    start = top_cluster_start(risk)
    in_cluster = z >= start if start is not None else np.zeros(len(z), dtype=bool)
    fenced = population_mask(risk, fence)
    if not fenced.all():
        keep = within_the_tail(z, fenced & ~in_cluster, ~fenced & ~in_cluster, _fence_logit(z, fence))
    else:
        keep = ~in_cluster
    thr = choose_thresholds(risk[keep], targets)
    near = {name: int((np.abs(z - _logit(np.array(t))) <= NEAR_LOGITS).sum()) for name, t in thr.model_dump().items()}
    n = max(len(risk), 1)
    return OperatorChoice(
        thresholds=thr,
        accounts=len(risk),
        trimmed=int((~keep).sum()),
        ever_blocked=float((risk >= thr.block).sum() / n),
        ever_acted=float((risk >= thr.throttle).sum() / n),
        near=near,
        cluster=int(in_cluster.sum()),
    )
