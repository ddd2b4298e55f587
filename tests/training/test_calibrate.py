"""Temperature scaling and threshold choice on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.bundle import Thresholds
from moat.models.calibration import sigmoid
from moat.training.calibrate import AccountScores, CalibrationTargets, choose_thresholds, event_risk, fit_temperature
from moat.training.sequences import Sequences


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_temperature_recovers_the_generating_scale(true_t: float) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 20000)
    y = (rng.random(20000) < sigmoid(z / true_t)).astype(np.uint8)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)


def test_thresholds_meet_benign_targets() -> None:
    benign = np.linspace(0.0, 0.9, 1000)  # 1000 benign accounts
    scores = AccountScores([f"a{i}" for i in range(1100)], np.r_[np.zeros(1000), np.ones(100)].astype(np.uint8), ["x"] * 1100, np.r_[benign, np.full(100, 0.99)])
    t = choose_thresholds(scores, CalibrationTargets(corroboration=0.5, target_block_fpr=0.001, target_perturb_fpr=0.005, target_action_fpr=0.01))
    assert (benign >= t.block).mean() <= 0.001
    assert (benign >= t.perturb).mean() <= 0.005
    assert (benign >= t.throttle).mean() <= 0.01
    assert t.throttle <= t.perturb <= t.block < 0.99  # attacks at 0.99 are still blocked


@pytest.mark.parametrize("n_benign", [300, 400, 1000])
def test_few_validation_accounts_still_give_graduated_thresholds(n_benign: int) -> None:
    # What validation looked like: a bulk, and a few benign accounts bunched near the top. With
    # the sample's own quantiles, 0.1% of a few hundred accounts is its maximum and all three
    # actions landed among those few, within 0.002 of each other.
    rng = np.random.default_rng(n_benign)
    z = np.r_[rng.normal(-2, 1, n_benign - 5), 3.9 + np.arange(5) * 0.02]
    benign = 1 / (1 + np.exp(-z))
    scores = AccountScores([f"a{i}" for i in range(n_benign)], np.zeros(n_benign, np.uint8), ["x"] * n_benign, benign)
    t = choose_thresholds(scores, CalibrationTargets(corroboration=0.5, target_block_fpr=0.001, target_perturb_fpr=0.005, target_action_fpr=0.01))
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert (benign >= t.block).mean() <= 0.001
    assert logit(t.block) - logit(t.throttle) >= 0.5
    assert (benign >= t.throttle).mean() <= 0.01


def _seqs(scopes: list[str], dependent: list[bool], event_rows: list[list[int]], mirror: list[bool] | None = None) -> Sequences:
    rows = len(scopes)  # one row per sequence
    return Sequences(
        feats=np.zeros((rows, 1), np.float16), tokens=np.zeros((rows, 1), np.uint16), labels=np.zeros(rows, np.uint8), dependent=np.array(dependent),
        mirror=np.array(mirror if mirror is not None else [False] * rows),
        offsets=np.arange(rows + 1, dtype=np.int64), scope=scopes, key=[f"k{i}" for i in range(len(scopes))],
        family=["x"] * len(scopes), label=np.zeros(len(scopes), np.uint8), event_rows=event_rows,
        event_account=["a"] * len(event_rows), event_label=np.zeros(len(event_rows), np.uint8), event_family=["x"] * len(event_rows),
    )


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# (case, scopes, dependent rows, per-row risk, event rows, expected event risks): the risk the
# serving policy acts on with thresholds T (gate 0.5, ceiling one reported unit below 0.95), so an
# uncorroborated dependent window must not count and a corroborated one stays below block.
T = Thresholds(throttle=0.5, perturb=0.8, block=0.95)
BELOW_BLOCK = 0.95 - 1e-6
EVENT_CASES = [
    ("own scopes: plain max", ["account", "api_key"], [False, False], [0.2, 0.4], [[0, 1]], [0.4]),
    ("uncorroborated address block left out", ["account", "ip_prefix"], [False, True], [0.2, 0.95], [[0, 1]], [0.2]),
    ("corroborated address block counts below block", ["account", "ip_prefix"], [False, True], [0.6, 0.97], [[0, 1]], [BELOW_BLOCK]),
    ("key corroborates", ["account", "api_key", "ip_prefix"], [False, False, True], [0.1, 0.7, 0.9], [[0, 1, 2]], [0.9]),
    ("partial key left out without corroboration", ["account", "api_key"], [False, True], [0.1, 0.98], [[0, 1]], [0.1]),
]


@pytest.mark.parametrize("case, scopes, dependent, risks, event_rows, expected", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event_risk_combines_scopes_like_the_policy(case, scopes, dependent, risks, event_rows, expected) -> None:
    seqs = _seqs(scopes, dependent, event_rows)
    got = event_risk(seqs, np.array([_logit(r) for r in risks]), temperature=1.0, corroboration=0.5, thresholds=T)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


# (case, scopes, dependent rows, mirrored rows, per-row risk, expected event risk): a window that
# mirrors the account's has the account's risk, as the scorer gives it, whatever the network
# would have said with its own scope flag.
MIRROR_CASES = [
    ("mirrored key: the account's risk", ["account", "api_key"], [False, False], [False, True], [0.2, 0.4], 0.2),
    ("a key of its own still counts", ["account", "api_key"], [False, False], [False, False], [0.2, 0.4], 0.4),
    ("mirrored block adds nothing", ["account", "ip_prefix"], [False, True], [False, True], [0.6, 0.97], 0.6),
    ("only the mirrored window is replaced", ["account", "api_key", "ip_prefix"], [False, False, True], [False, True, False], [0.6, 0.9, 0.97], BELOW_BLOCK),
]


@pytest.mark.parametrize("case, scopes, dependent, mirror, risks, expected", MIRROR_CASES, ids=[c[0] for c in MIRROR_CASES])
def test_a_mirrored_window_has_the_account_risk(case, scopes, dependent, mirror, risks, expected) -> None:
    seqs = _seqs(scopes, dependent, [list(range(len(scopes)))], mirror)
    got = event_risk(seqs, np.array([_logit(r) for r in risks]), temperature=1.0, corroboration=0.5, thresholds=T)
    np.testing.assert_allclose(got, [expected], rtol=1e-9)


@pytest.mark.parametrize("case, scopes, dependent, risks, event_rows, expected", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_without_thresholds_event_risk_is_the_own_risk(case, scopes, dependent, risks, event_rows, expected) -> None:
    seqs = _seqs(scopes, dependent, event_rows)
    got = event_risk(seqs, np.array([_logit(r) for r in risks]), temperature=1.0, corroboration=0.5)
    own = [max(risks[r] for r in rows if not dependent[r]) for rows in event_rows]
    np.testing.assert_allclose(got, own, rtol=1e-9)
