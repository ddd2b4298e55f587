"""The network is causal, small, and reads padding as nothing."""

from __future__ import annotations

import pytest
import torch

from moat.models.feature_spec import N_FEATURES, N_TOKENS
from moat.models.network import NetConfig, RiskNet, count_parameters


@pytest.fixture(scope="module")
def net() -> RiskNet:
    torch.manual_seed(0)
    return RiskNet(NetConfig()).eval()


def inputs(b: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(b * 31 + t)
    return torch.rand(b, t, N_FEATURES, generator=g), torch.randint(0, 4096, (b, t, N_TOKENS), generator=g), torch.ones(b, t)


def test_parameter_budget(net: RiskNet) -> None:
    assert count_parameters(net) <= 1_000_000


@pytest.mark.parametrize("t, changed", [(6, 5), (6, 3), (16, 0)])
def test_position_sees_only_the_past(net: RiskNet, t: int, changed: int) -> None:
    feats, tokens, mask = inputs(2, t)
    with torch.no_grad():
        a = net(feats, tokens, mask)
        feats2 = feats.clone()
        feats2[:, changed] += 5.0
        b = net(feats2, tokens, mask)
    assert torch.allclose(a[:, :changed], b[:, :changed], atol=1e-6)
    assert not torch.allclose(a[:, changed:], b[:, changed:], atol=1e-4)


def test_right_padding_does_not_change_real_positions(net: RiskNet) -> None:
    feats, tokens, mask = inputs(1, 8)
    padded_f = torch.cat([feats, torch.rand(1, 4, N_FEATURES)], 1)
    padded_t = torch.cat([tokens, torch.randint(1, 4096, (1, 4, N_TOKENS))], 1)
    padded_m = torch.cat([mask, torch.zeros(1, 4)], 1)
    with torch.no_grad():
        assert torch.allclose(net(feats, tokens, mask), net(padded_f, padded_t, padded_m)[:, :8], atol=1e-5)
