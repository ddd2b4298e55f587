"""The sigmoid that training, export checks and serving share: finite for any logit, and the
clipped formula's value bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.calibration import calibrated_risk, sigmoid

# (case, logits)
LOGITS = [
    ("ordinary", [-3.5, -0.25, 0.0, 0.25, 3.5]),
    ("at and beyond the clip", [-60.0, 60.0, -1e6, 1e6, -np.inf, np.inf]),
    ("tiny and subnormal", [1e-300, -5e-324, -0.0]),
    ("NaN stays NaN (a broken network must show)", [np.nan]),
]


@pytest.mark.parametrize("case, logits", LOGITS, ids=[c[0] for c in LOGITS])
def test_sigmoid_is_the_clipped_formula(case: str, logits: list[float]) -> None:
    x = np.array(logits, dtype=np.float64)
    want = 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
    got = sigmoid(x)
    assert got.tobytes() == want.tobytes()
    finite = ~np.isnan(x)
    assert np.all(np.isfinite(got[finite]) & (got[finite] > 0) & (got[finite] <= 1))


def test_temperature_divides_the_logit() -> None:
    x = np.array([-2.0, 0.5, 4.0])
    assert np.array_equal(calibrated_risk(x, 2.0), sigmoid(x / 2.0))
