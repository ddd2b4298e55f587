"""Parameter-value jitter: shifts only values the client sent, one offset per window; never
invents a parameter, never moves an absent value, a flag, a text or a relational feature."""

from __future__ import annotations

import pytest
import torch

from moat.models.feature_spec import INDEX, N_FEATURES, SPEC, presence_flag
from moat.training.augment import PARAM_FEATURES, drop_token_bags, jitter_values

PARAMS = [INDEX[name] for name in PARAM_FEATURES]
OTHERS = [i for i in range(N_FEATURES) if i not in PARAMS]


def batch(b: int = 64, t: int = 16) -> torch.Tensor:
    """Random windows with the parameter fields set as a client would send them: temperature
    sent on even positions only (absent on odd ones, encoded as the spec says), no logit_bias
    and no n anywhere, max_tokens sent as one constant habit."""
    torch.manual_seed(0)
    feats = torch.rand(b, t, N_FEATURES)
    sent = torch.arange(t) % 2 == 0
    feats[:, :, INDEX["temperature_set"]] = sent.float()
    feats[:, ~sent, INDEX["temperature"]] = SPEC["temperature"].absent
    for name in ("n", "logit_bias_size", "logit_bias_max", "logit_bias_spread"):
        feats[:, :, INDEX[name]] = SPEC[name].absent
    feats[:, :, INDEX["max_tokens_set"]] = 1.0
    feats[:, :, INDEX["max_tokens"]] = 0.4
    return feats


@pytest.mark.parametrize("p, scale", [(1.0, 0.3), (0.5, 0.1), (0.0, 0.3), (1.0, 0.0)])
def test_jitter(p: float, scale: float) -> None:
    feats = batch()
    out = jitter_values(feats, p, scale)
    assert torch.equal(out[:, :, OTHERS], feats[:, :, OTHERS])  # flags, text, relational features: untouched
    for name in ("n", "logit_bias_size", "logit_bias_max", "logit_bias_spread"):
        assert torch.equal(out[:, :, INDEX[name]], feats[:, :, INDEX[name]]), f"absent {name} moved"
    t = INDEX["temperature"]
    assert torch.equal(out[:, 1::2, t], feats[:, 1::2, t])  # an absent temperature stays at its absent encoding
    delta = out[:, :, PARAMS] - feats[:, :, PARAMS]
    assert delta.abs().max() <= scale + 1e-6
    mt = out[:, :, INDEX["max_tokens"]]
    assert torch.allclose(mt, mt[:, :1].expand_as(mt))  # one offset per window: a habit stays constant
    moved = (mt[:, 0] != 0.4).float().mean().item()
    if p == 0 or scale == 0:
        assert moved == 0
    else:
        assert moved == pytest.approx(p, abs=0.2)
        assert (mt > 0).all() and (out[:, ::2, t] > 0).all()  # a sent value stays sent (above an absent 0)


def test_every_sent_parameter_moves_and_nothing_else() -> None:
    feats = torch.rand(32, 16, N_FEATURES) * 0.8 + 0.1  # every value present and away from 0
    for name in PARAM_FEATURES:
        if (flag := presence_flag(name)) is not None:
            feats[:, :, INDEX[flag]] = 1.0
    out = jitter_values(feats, 1.0, 0.2)
    changed = {i for i in range(N_FEATURES) if not torch.equal(out[:, :, i], feats[:, :, i])}
    assert changed == set(PARAMS)


@pytest.mark.parametrize(("p", "low", "high"), [(0.0, 0.0, 0.0), (0.3, 0.2, 0.4), (1.0, 1.0, 1.0)])
def test_token_bags_drop_whole_windows_at_the_set_rate(p: float, low: float, high: float) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(1, 4096, (2000, 16, 8))
    out = drop_token_bags(tokens, p)
    dropped = (out == 0).flatten(1).all(1)
    kept = (out == tokens).flatten(1).all(1)
    # A window keeps all its words or loses all of them: never a partial bag.
    assert bool((dropped | kept).all())
    assert low <= dropped.float().mean().item() <= high
