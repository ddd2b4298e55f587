"""Scores every request of a trace exactly as serving would, then fits the temperature and the
action thresholds on validation traffic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from moat.models.bundle import Thresholds
from moat.models.calibration import calibrated_risk
from moat.models.feature_spec import WINDOW
from moat.models.metrics import auroc, tpr_at_fpr
from moat.models.policy import Policy, combined_risk
from moat.models.thresholds import ActionTargets
from moat.models.thresholds import choose_thresholds as thresholds_for
from moat.training.sequences import Sequences, row_windows

RunFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CalibrationTargets:
    """What a bundle's calibration is chosen for (TrainConfig's fields of the same names). Every
    checkpoint records it, so that `moat export` recalibrates for the run's own targets."""

    corroboration: float
    target_block_fpr: float
    target_perturb_fpr: float
    target_action_fpr: float

    def action_targets(self) -> ActionTargets:
        return ActionTargets(block=self.target_block_fpr, perturb=self.target_perturb_fpr, action=self.target_action_fpr)


def exact_logits(run: RunFn, seqs: Sequences, batch: int = 1024, progress: bool = False) -> np.ndarray:
    """The logit each row gets in serving: the last position of the window that ends at it.
    Rows are grouped by window length, so no batch needs padding."""
    starts = row_windows(seqs, WINDOW)
    rows = np.arange(len(seqs.labels))
    lengths = rows - starts + 1
    out = np.zeros(len(rows), dtype=np.float32)
    groups = [(n, rows[lengths == n]) for n in range(1, WINDOW + 1)]
    total = sum((len(r) + batch - 1) // batch for _, r in groups)
    bar = tqdm(total=total, desc="score windows", disable=not progress, mininterval=1.0)
    for n, members in groups:
        offs = np.arange(n)
        for i in range(0, len(members), batch):
            r = members[i : i + batch]
            idx = starts[r][:, None] + offs[None, :]
            feats = seqs.feats[idx].astype(np.float32)
            tokens = seqs.tokens[idx].astype(np.int64)
            mask = np.ones((len(r), n), dtype=np.float32)
            out[r] = run(feats, tokens, mask)[:, -1]
            bar.update()
    bar.close()
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T minimising validation log-loss of sigmoid(logit / T)."""
    y = labels.astype(np.float64)
    best_t, best = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.2), np.log(10), 120)):
        p = np.clip(calibrated_risk(logits, t), 1e-7, 1 - 1e-7)
        nll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        if nll < best:
            best_t, best = float(t), nll
    return best_t


@dataclass
class AccountScores:
    accounts: list[str]
    labels: np.ndarray
    families: list[str]
    risk: np.ndarray  # max calibrated risk over the account's requests


def event_risk(seqs: Sequences, row_logits: np.ndarray, temperature: float, corroboration: float, thresholds: Thresholds | None = None) -> np.ndarray:
    """A request's risk combined over its scopes exactly as the serving policy combines them
    with these thresholds (a dependent window counts only once the own risk reaches the policy's
    gate, and never beyond perturb; a window that mirrors the account's has the account's
    risk). Without thresholds, the own risk alone: what decides whether an account is ever
    acted on or blocked, so thresholds are chosen on it."""
    p = calibrated_risk(row_logits, temperature)
    dep, mirror = seqs.dependent, seqs.mirror
    policy = Policy(thresholds, cooldown_s=0.0, shadow=False, corroboration=corroboration) if thresholds is not None else None
    out = np.empty(len(seqs.event_rows), dtype=np.float64)
    for i, rows in enumerate(seqs.event_rows):
        if mirror[rows].any():  # the account's row comes first
            rows = [rows[0], *(r for r in rows[1:] if not mirror[r])]
        own = max((float(p[r]) for r in rows if not dep[r]), default=0.0)
        if policy is None:
            out[i] = own
            continue
        dependent = max((float(p[r]) for r in rows if dep[r]), default=0.0)
        out[i] = combined_risk(own, dependent, policy.corroboration, policy.dependent_ceiling)
    return out


def account_scores(seqs: Sequences, ev_risk: np.ndarray) -> AccountScores:
    best: dict[str, float] = {}
    label: dict[str, int] = {}
    fam: dict[str, str] = {}
    for acc, r, y, f in zip(seqs.event_account, ev_risk, seqs.event_label, seqs.event_family):
        best[acc] = max(best.get(acc, 0.0), float(r))
        label[acc] = max(label.get(acc, 0), int(y))
        fam.setdefault(acc, f)
    accs = sorted(best)
    return AccountScores(accs, np.array([label[a] for a in accs]), [fam[a] for a in accs], np.array([best[a] for a in accs]))


def choose_thresholds(scores: AccountScores, targets: CalibrationTargets) -> Thresholds:
    """Thresholds so that at most the target share of validation benign accounts ever reaches
    each action (the core rule, on the benign accounts' maxima)."""
    return thresholds_for(scores.risk[scores.labels == 0], targets.action_targets())


def summary_metrics(scores: AccountScores, thr: Thresholds) -> dict[str, float]:
    y, r = scores.labels, scores.risk
    benign, attack = r[y == 0], r[y == 1]
    return {
        "account_auroc": auroc(y, r),
        "tpr_at_1pct_fpr": tpr_at_fpr(y, r, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(y, r, 0.001),
        "benign_ever_blocked": float((benign >= thr.block).mean()) if len(benign) else 0.0,
        "benign_ever_non_allow": float((benign >= thr.throttle).mean()) if len(benign) else 0.0,
        "attack_ever_acted_on": float((attack >= thr.throttle).mean()) if len(attack) else 0.0,
        "accounts": float(len(y)),
        "attack_accounts": float(y.sum()),
    }
