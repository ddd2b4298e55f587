"""The fused ONNX graph against RiskNet.forward: several network shapes, batch sizes and
lengths with padding, the weights read back, and the shipped bundle against today's network."""

from __future__ import annotations

import onnx
import pytest
import torch

from moat.models.bundle import DEFAULT_BUNDLE, load_bundle
from moat.models.network import NetConfig, RiskNet
from moat.training.export import export_onnx, parity, weights_from_onnx

GRID = {"batches": (1, 2, 7, 64), "lengths": (1, 2, 5, 16)}


def random_net(cfg: NetConfig, seed: int = 0) -> RiskNet:
    """Weights far from their initial values (a fresh LayerNorm is the identity, a fresh token
    row 0.02 wide), and a narrow input range so the clip is exercised."""
    torch.manual_seed(seed)
    net = RiskNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
        lo = -0.5 * torch.rand(cfg.n_features)
        net.set_input_range(lo, lo + 1.2)
    return net


@pytest.mark.parametrize(
    "cfg",
    [
        NetConfig(),
        NetConfig(hidden=48, layers=3, heads=6, ffn=96),
        NetConfig(hidden=16, layers=1, heads=2, ffn=24),
    ],
    ids=["default", "wider-deeper", "one-layer"],
)
def test_export_matches_torch_and_reads_back(tmp_path, cfg: NetConfig) -> None:
    net = random_net(cfg)
    path = tmp_path / "model.onnx"
    export_onnx(net, path)
    assert parity(net, path, **GRID) <= 1e-5
    back = weights_from_onnx(path, cfg).state_dict()
    for key, value in net.state_dict().items():
        if "word_embeddings" not in key:  # inputs_embeds: never read, not exported
            assert torch.equal(back[key], value), key


def test_parity_fails_on_a_graph_of_other_weights(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(random_net(NetConfig(), seed=1), path)
    with pytest.raises(AssertionError, match="ONNX parity failed"):
        parity(random_net(NetConfig(), seed=2), path, **GRID)


def test_shipped_bundle_is_todays_network() -> None:
    """The shipped graph, read back into RiskNet, gives its own logits: a change to
    RiskNet.forward that the bundle was not re-exported for fails here."""
    meta, path = load_bundle(DEFAULT_BUNDLE)
    assert parity(weights_from_onnx(path, NetConfig(**meta.net)), path, **GRID) <= 1e-5


def test_a_graph_of_another_exporter_is_refused_by_name(tmp_path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])), str(path))
    with pytest.raises(ValueError, match=rf"{path}: not a graph of this exporter; weights not found: \['encoder"):
        weights_from_onnx(path, NetConfig())
