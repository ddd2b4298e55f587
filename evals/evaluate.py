"""`moat evaluate`: replay a held-out trace through the real Scorer and through each baseline,
then measure all of them at the level of the account."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from moat.evals.baselines import BASELINES, Baseline
from moat.evals.cost import AttackOutcome, CostModel, cost_multiplier
from moat.evals.data import EvalData
from moat.models.events import Event
from moat.models.metrics import auroc, pr_auc, roc_curve, tpr_at_fpr
from moat.models.policy import ACTIONS
from moat.models.traces import iter_raw
from moat.serving.settings import ServingSettings

log = logging.getLogger(__name__)
MOAT = "moat"


@dataclass
class MethodRun:
    """Per-event output of one method on the trace."""

    name: str
    scores: np.ndarray  # higher = more extraction-like
    levels: np.ndarray  # 0 allow, 1 throttle, 2 perturb, 3 block (baselines: 0 or 3)
    threshold_note: str = ""


@dataclass
class Accounts:
    """Events grouped by account, in trace order."""

    names: list[str]
    index: np.ndarray  # event -> account
    labels: np.ndarray  # per account
    families: list[str]
    order: list[np.ndarray] = field(default_factory=list)  # per account: its event indices in order

    @classmethod
    def build(cls, data: EvalData) -> "Accounts":
        names, index = np.unique(np.asarray(data.accounts), return_inverse=True)
        labels = np.zeros(len(names), dtype=np.uint8)
        np.maximum.at(labels, index, data.labels)
        fam = [""] * len(names)
        for i, f in zip(index, data.families):
            if not fam[i]:
                fam[i] = f
        order = np.argsort(index, kind="stable")
        bounds = np.searchsorted(index[order], np.arange(len(names) + 1))
        return cls(list(names), index, labels, fam, [order[bounds[a] : bounds[a + 1]] for a in range(len(names))])

    def max_per_account(self, values: np.ndarray) -> np.ndarray:
        out = np.full(len(self.names), -np.inf)
        np.maximum.at(out, self.index, values)
        return out


# The learned baselines fit on the training trace's first events only: on `make eval`'s train
# split, its first 10.5 of 48 hours, every family present. Featurising all of it (980,000
# events) for them would take longer than the evaluation itself.
BASELINE_TRAIN_EVENTS = 150_000


def moat_run(trace: Path, bundle: Path | None, progress: bool) -> MethodRun:
    from moat.serving.scorer import Scorer

    # Enforce mode whatever MOAT_MODE says: in shadow mode every action reads allow.
    settings = ServingSettings(state="memory", mode="enforce", **({"model": str(bundle)} if bundle else {}))
    scorer = Scorer(settings)
    events = (Event.model_validate(r) for r in iter_raw(trace))
    risks, levels = [], []
    for s in tqdm(scorer.score_stream(events), desc="moat replay", unit=" events", disable=not progress, mininterval=1.0):
        assert s is not None
        risks.append(s.risk)
        levels.append(ACTIONS.index(s.action))
    return MethodRun(MOAT, np.asarray(risks), np.asarray(levels, dtype=np.int8), f"bundle thresholds {scorer.policy.t.model_dump()}")


def baseline_run(b: Baseline, data: EvalData, acc: Accounts) -> MethodRun:
    scores = b.score(data)
    if b.fixed_threshold is not None:
        thr, note = b.fixed_threshold, "fixed limit"
    else:
        # Operating point: the threshold that acts on 1% of benign accounts of this very trace,
        # an oracle choice that favours the baseline.
        benign = np.sort(acc.max_per_account(scores)[acc.labels == 0])
        thr = float(np.nextafter(benign[-(int(0.01 * len(benign)) + 1)], np.inf)) if len(benign) else 0.5
        note = f"oracle threshold {thr:.4g} at 1% benign-account FPR"
    return MethodRun(b.name, scores, np.where(scores >= thr, 3, 0).astype(np.int8), note)


def method_metrics(run: MethodRun, acc: Accounts, data: EvalData, cost: CostModel) -> dict[str, Any]:
    """Account-level metrics of one method. `cost_multiplier` is an estimate against an open-loop
    attacker: the recorded traffic does not react to the method's actions (evals/cost.py)."""
    y = acc.labels
    risk = acc.max_per_account(run.scores)
    level = acc.max_per_account(run.levels.astype(np.float64))
    benign, attack = y == 0, y == 1
    m: dict[str, Any] = {
        "auroc": auroc(y, risk),
        "pr_auc": pr_auc(y, risk),
        "tpr_at_1pct_fpr": tpr_at_fpr(y, risk, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(y, risk, 0.001),
        "benign_ever_blocked": float((level[benign] >= 3).mean()) if benign.any() else 0.0,
        "benign_ever_non_allow": float((level[benign] >= 1).mean()) if benign.any() else 0.0,
        "attack_ever_acted_on": float((level[attack] >= 1).mean()) if attack.any() else 0.0,
        "operating_point": run.threshold_note,
    }
    fams = sorted(set(acc.families))
    per_persona, per_family = {}, {}
    delays: list[float] = []
    fam_outcomes: dict[str, AttackOutcome] = {}
    for f in fams:
        members = [a for a in range(len(acc.names)) if acc.families[a] == f]
        lv = level[members]
        if y[members[0]] == 0:
            per_persona[f] = {
                "accounts": len(members),
                "throttled": float((lv >= 1).mean()),
                "perturbed": float((lv >= 2).mean()),
                "blocked": float((lv >= 3).mean()),
            }
            continue
        outcome = AttackOutcome()
        fam_delays = []
        for a in members:
            ev = acc.order[a]
            lv_a = run.levels[ev]
            first = np.flatnonzero(lv_a >= 1)
            # An account never acted on counts as never detected: leaving it out let a method
            # that catches one account in a hundred, at once, report a median of 0.
            fam_delays.append(float(first[0]) if len(first) else math.inf)
            outcome.add(_outcome(lv_a, data.ts[ev], cost))
        delays.extend(fam_delays)
        fam_outcomes[f] = outcome
        fam_y = np.r_[np.zeros(int(benign.sum())), np.ones(len(members))]
        fam_s = np.r_[risk[benign], risk[members]]
        per_family[f] = {
            "accounts": len(members),
            "acted_on": float((lv >= 1).mean()),
            "auroc": auroc(fam_y, fam_s),
            "tpr_at_1pct_fpr": tpr_at_fpr(fam_y, fam_s, 0.01),
            "median_queries_to_detection": delay_percentile(fam_delays, 50),
            "clean_yield": outcome.allowed / max(outcome.sent, 1),
            "cost_multiplier": cost_multiplier(outcome, cost),
        }
    total = AttackOutcome()
    for o in fam_outcomes.values():
        total.add(o)
    m.update(
        per_persona=per_persona,
        per_family=per_family,
        queries_to_detection={"median": delay_percentile(delays, 50), "p90": delay_percentile(delays, 90), "detected_accounts": sum(math.isfinite(d) for d in delays), "attack_accounts": int(attack.sum())},
        clean_yield=total.allowed / max(total.sent, 1),
        cost_multiplier=cost_multiplier(total, cost),
    )
    return m


def delay_percentile(delays: list[float], q: float) -> float:
    """A percentile of queries to detection over every attack account, inf for one never acted
    on; the empirical quantile (an observed value: no interpolation towards inf). NaN without
    accounts."""
    return float(np.percentile(delays, q, method="inverted_cdf")) if delays else math.nan


def _outcome(levels: np.ndarray, ts: np.ndarray, cost: CostModel) -> AttackOutcome:
    # Open loop: the account sends every recorded request, however the earlier ones were answered.
    o = AttackOutcome(sent=len(levels), accounts=1)
    counts = np.bincount(levels.astype(np.int64), minlength=4)
    o.allowed, o.throttled, o.perturbed, o.blocked = (int(c) for c in counts[:4])
    minutes = np.floor(ts / 60.0).astype(np.int64)
    per_min = np.unique(minutes, return_counts=True)[1]
    o.rate_limited = int(np.clip(per_min - cost.rate_limit_per_min, 0, None).sum())
    return o


def roc_points(run: MethodRun, acc: Accounts) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(acc.labels, acc.max_per_account(run.scores))
    return fpr, tpr


def evaluate(trace: Path, bundle: Path | None, baselines: list[str], train_trace: Path | None, cost: CostModel, progress: bool = True) -> tuple[dict[str, Any], list[MethodRun], Accounts, EvalData]:
    data = EvalData.from_trace(trace, progress=progress)  # first: it refuses an unlabelled trace
    runs = [moat_run(trace, bundle, progress)]
    acc = Accounts.build(data)
    train = None
    for name in tqdm(baselines, desc="baselines", disable=not progress):
        b = BASELINES[name]()
        if b.trained:
            if train is None:
                if train_trace is None:
                    raise ValueError(f"baseline {name} needs a training trace: pass --train-traces")
                train = EvalData.from_trace(train_trace, progress=progress, limit=BASELINE_TRAIN_EVENTS)
            b.fit(train)
        runs.append(baseline_run(b, data, acc))
    metrics = {
        "trace": str(trace),
        "events": len(data),
        "accounts": len(acc.names),
        "attack_accounts": int(acc.labels.sum()),
        "methods": {r.name: method_metrics(r, acc, data, cost) for r in runs},
        "cost_model": cost.model_dump(),
    }
    return metrics, runs, acc, data
