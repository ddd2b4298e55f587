"""Temperature scaling and threshold choice on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import AccountScores, choose_thresholds, fit_temperature, sigmoid


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_temperature_recovers_the_generating_scale(true_t: float) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 20000)
    y = (rng.random(20000) < sigmoid(z / true_t)).astype(np.uint8)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)


def test_thresholds_meet_benign_targets() -> None:
    benign = np.linspace(0.0, 0.9, 1000)  # 1000 benign accounts
    scores = AccountScores([f"a{i}" for i in range(1100)], np.r_[np.zeros(1000), np.ones(100)].astype(np.uint8), ["x"] * 1100, np.r_[benign, np.full(100, 0.99)])
    t = choose_thresholds(scores, block_fpr=0.001, perturb_fpr=0.005, action_fpr=0.01)
    assert (benign >= t.block).mean() <= 0.001
    assert (benign >= t.perturb).mean() <= 0.005
    assert (benign >= t.throttle).mean() <= 0.01
    assert t.throttle <= t.perturb <= t.block < 0.99  # attacks at 0.99 are still blocked
