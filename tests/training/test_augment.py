"""Parameter-value jitter: shifts only sent values, one offset per window, never invents a
parameter and never touches flags or relational features."""

from __future__ import annotations

import pytest
import torch

from moat.models.feature_spec import FEATURES, N_FEATURES
from moat.training.augment import _COLS, VALUE_FEATURES, jitter_values

I = {f.name: i for i, f in enumerate(FEATURES)}


def batch(b: int = 64, t: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    feats = torch.rand(b, t, N_FEATURES)
    feats[:, :, I["logit_bias_size"]] = 0.0  # no bias sent in any request
    feats[:, :, I["max_tokens"]] = 0.4  # a constant habit
    return feats


@pytest.mark.parametrize("p, scale", [(1.0, 0.3), (0.5, 0.1), (0.0, 0.3), (1.0, 0.0)])
def test_jitter(p: float, scale: float) -> None:
    feats = batch()
    out = jitter_values(feats, p, scale)
    others = [i for i in range(N_FEATURES) if i not in _COLS]
    assert torch.equal(out[:, :, others], feats[:, :, others])  # flags, relational features: untouched
    assert torch.equal(out[:, :, I["logit_bias_size"]], feats[:, :, I["logit_bias_size"]])  # absent stays absent
    delta = out[:, :, _COLS] - feats[:, :, _COLS]
    assert delta.abs().max() <= scale + 1e-6
    mt = out[:, :, I["max_tokens"]]
    assert torch.allclose(mt, mt[:, :1].expand_as(mt))  # one offset per window: a habit stays constant
    moved = (mt[:, 0] != 0.4).float().mean().item()
    if p == 0 or scale == 0:
        assert moved == 0
    else:
        assert moved == pytest.approx(p, abs=0.2)
        assert (out[:, :, _COLS][feats[:, :, _COLS] > 0] > 0).all()  # a sent value stays sent


def test_value_features_exist() -> None:
    assert all(name in I for name in VALUE_FEATURES)
