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


@pytest.mark.parametrize(
    ("value", "clipped_to"),
    [(5.0, 1.0), (-3.0, 0.0), (0.4, 0.4)],
    ids=["above the training range", "below it", "inside it"],
)
def test_inputs_outside_the_training_range_read_as_its_edge(value: float, clipped_to: float) -> None:
    torch.manual_seed(0)
    net = RiskNet(NetConfig()).eval()
    net.set_input_range(torch.zeros(N_FEATURES), torch.ones(N_FEATURES))
    feats, tokens, mask = inputs(2, 6)
    out_of_range, edge = feats.clone(), feats.clone()
    out_of_range[:, :, 0], edge[:, :, 0] = value, clipped_to
    with torch.no_grad():
        assert torch.allclose(net(out_of_range, tokens, mask), net(edge, tokens, mask), atol=1e-6)
    # The range is a buffer: it travels with the weights into checkpoints and the ONNX graph.
    restored = RiskNet(NetConfig())
    restored.load_state_dict(net.state_dict())
    assert torch.equal(restored.input_hi, torch.ones(N_FEATURES)) and torch.equal(restored.input_lo, torch.zeros(N_FEATURES))


def test_unseen_token_buckets_start_near_zero() -> None:
    # A hashed bucket training never touches keeps its initial row: it must add next to nothing
    # next to the feature projection (LayerNorm'd, norm about sqrt(hidden)).
    net = RiskNet(NetConfig())
    norms = net.tok_emb.weight.norm(dim=1)
    assert norms[0] == 0.0
    assert norms[1:].max() < 0.05 * NetConfig().hidden**0.5 * 3
