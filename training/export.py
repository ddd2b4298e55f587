"""ONNX export with a parity check against torch at several batch sizes and lengths.

The graph is written from the network's weights with onnxruntime's fused operators (com.microsoft
Attention, SkipLayerNormalization, BiasGelu) instead of traced by torch's exporter. Serving runs
the network once per request on one to three short windows, where a call's cost is mostly
onnxruntime's fixed cost per node: the traced graph had 100 nodes (87 after onnxruntime's own
fusions, which do not recognise its causal attention), this one has 36. On live dev-spread
windows a call takes 0.72-0.75x the traced graph's time (`benchmarks/bench_scoring.py
--base DIR --bundles-only`); batches of hundreds gain nothing and lose nothing. Every operator used has a CPU
and a CUDA kernel in the standard onnxruntime builds.

The graph restates `RiskNet.forward` (models/network.py) operator by operator, so a change there
must be mirrored in `_graph`: `parity` compares the two at every export, and training fails
when they differ. Initializers are named after the state-dict keys (a Linear weight stored
transposed carries "^T", the three attention projections are one "qkv" matrix), so
`weights_from_onnx` reads a bundle's network back for torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moat.models.feature_spec import N_FEATURES, N_TOKENS, TOKEN_VOCAB, WINDOW
from moat.models.network import NetConfig, RiskNet

INPUT_NAMES = ["feats", "tokens", "mask"]
OUTPUT_NAMES = ["logits"]
OPSET = 17  # LayerNormalization is standard from 17; the fused operators are com.microsoft's version 1
MS = "com.microsoft"
TRANSPOSED = "^T"
QKV = ("query", "key", "value")


def example_inputs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(batch, length, N_FEATURES, generator=g)
    tokens = torch.randint(0, TOKEN_VOCAB, (batch, length, N_TOKENS), generator=g)
    mask = torch.ones(batch, length)
    return feats, tokens, mask


class _Graph:
    """Nodes and initializers in the order they are added."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}

    def w(self, key: str, transposed: bool = False) -> str:
        """The initializer for state-dict entry `key`, stored as the graph reads it."""
        name = key + (TRANSPOSED if transposed else "")
        if name not in self.inits:
            v = self.state[key]
            self.inits[name] = np.ascontiguousarray(v.T if transposed else v)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def op(self, op_type: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:  # noqa: ANN003
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], domain=domain, **attrs))
        return output


def _graph(state: dict[str, np.ndarray], cfg: NetConfig, ln_eps: float, bert_eps: float) -> _Graph:
    """RiskNet.forward as onnxruntime operators, in the same order of floating-point operations
    wherever a fused operator allows it."""
    from onnx import TensorProto

    g = _Graph(state)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    # Inputs clipped to the training range.
    g.op("Max", ["feats", g.w("input_lo")], "clip_lo")
    feats = g.op("Min", ["clip_lo", g.w("input_hi")], "clipped")
    # Mean of the real tokens' embeddings (padding id 0 embeds to zero).
    g.op("Gather", [g.w("tok_emb.weight"), "tokens"], "tok_rows")
    g.op("ReduceSum", ["tok_rows", g.const("axis_2", i64(2))], "tok_sum", keepdims=0)
    g.op("Greater", ["tokens", g.const("zero_i64", np.array(0, dtype=np.int64))], "tok_real")
    g.op("Cast", ["tok_real"], "tok_real_f", to=TensorProto.FLOAT)
    g.op("ReduceSum", ["tok_real_f", g.const("axis_last", i64(-1))], "tok_count", keepdims=1)
    g.op("Max", ["tok_count", g.const("one_f32", np.array(1.0, dtype=np.float32))], "tok_count_1")
    tok = g.op("Div", ["tok_sum", "tok_count_1"], "tok")
    # feat_proj: Linear, GELU (erf, as BiasGelu), LayerNorm.
    g.op("MatMul", [feats, g.w("feat_proj.0.weight", transposed=True)], "proj")
    g.op("BiasGelu", ["proj", g.w("feat_proj.0.bias")], "proj_gelu", domain=MS)
    g.op("LayerNormalization", ["proj_gelu", g.w("feat_proj.2.weight"), g.w("feat_proj.2.bias")], "proj_ln", axis=-1, epsilon=ln_eps)
    g.op("Add", ["proj_ln", tok], "x_in")
    # BERT's embeddings on inputs_embeds: + token type 0, + position[:T], LayerNorm.
    e = "encoder.embeddings."
    g.op("Add", ["x_in", g.w(e + "token_type_embeddings.weight")], "x_tt")
    g.op("Shape", ["feats"], "length", start=1, end=2)
    g.op("Slice", [g.w(e + "position_embeddings.weight"), g.const("zero_1", i64(0)), "length", "zero_1"], "positions")
    g.op("Add", ["x_tt", "positions"], "x_pos")
    x = g.op("LayerNormalization", ["x_pos", g.w(e + "LayerNorm.weight"), g.w(e + "LayerNorm.bias")], "x0", axis=-1, epsilon=bert_eps)
    # Causal attention over real positions: Attention's unidirectional flag is the causal mask,
    # its 2D mask_index the key padding mask (RiskNet builds both into one additive mask).
    mask = g.op("Cast", ["mask"], "mask_i32", to=TensorProto.INT32)
    for i in range(cfg.layers):
        p = f"encoder.encoder.layer.{i}."
        a = p + "attention.self."
        qkv_w = g.const(a + "qkv.weight" + TRANSPOSED, np.ascontiguousarray(np.concatenate([state[f"{a}{n}.weight"].T for n in QKV], axis=1)))
        qkv_b = g.const(a + "qkv.bias", np.concatenate([state[f"{a}{n}.bias"] for n in QKV]))
        g.op("Attention", [x, qkv_w, qkv_b, mask], f"attn{i}", domain=MS, num_heads=cfg.heads, unidirectional=1)
        g.op("MatMul", [f"attn{i}", g.w(p + "attention.output.dense.weight", transposed=True)], f"attn_out{i}")
        o = p + "attention.output."
        h = g.op("SkipLayerNormalization", [f"attn_out{i}", x, g.w(o + "LayerNorm.weight"), g.w(o + "LayerNorm.bias"), g.w(o + "dense.bias")], f"h{i}", domain=MS, epsilon=bert_eps)
        g.op("MatMul", [h, g.w(p + "intermediate.dense.weight", transposed=True)], f"ffn_in{i}")
        g.op("BiasGelu", [f"ffn_in{i}", g.w(p + "intermediate.dense.bias")], f"ffn_gelu{i}", domain=MS)
        g.op("MatMul", [f"ffn_gelu{i}", g.w(p + "output.dense.weight", transposed=True)], f"ffn_out{i}")
        o = p + "output."
        x = g.op("SkipLayerNormalization", [f"ffn_out{i}", h, g.w(o + "LayerNorm.weight"), g.w(o + "LayerNorm.bias"), g.w(o + "dense.bias")], f"x{i + 1}", domain=MS, epsilon=bert_eps)
    g.op("MatMul", [x, g.w("head.weight", transposed=True)], "head")
    g.op("Add", ["head", g.w("head.bias")], "head_b")
    g.op("Squeeze", ["head_b", g.const("axis_last_sq", i64(-1))], "logits")
    return g


def export_onnx(net: RiskNet, path: Path) -> None:
    from onnx import TensorProto, checker, helper, numpy_helper, save

    net = net.eval()
    cfg = net.cfg
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    g = _graph(state, cfg, ln_eps=net.feat_proj[2].eps, bert_eps=net.encoder.config.layer_norm_eps)
    dims = ["batch", "length"]
    graph = helper.make_graph(
        g.nodes,
        "risknet",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [*dims, cfg.n_features]),
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [*dims, cfg.n_tokens]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, dims),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(v, k) for k, v in g.inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)], producer_name="moat")
    model.ir_version = 8  # the oldest IR with opset 17: any onnxruntime >= 1.14 loads it
    checker.check_model(model)
    save(model, str(path))


def weights_from_onnx(path: Path, cfg: NetConfig) -> RiskNet:
    """The torch network whose export is `path` (a graph `export_onnx` wrote)."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, value in inits.items():
        key, transposed = name.removesuffix(TRANSPOSED), name.endswith(TRANSPOSED)
        value = value.T if transposed else value
        parts = zip(QKV, np.split(value, 3)) if ".attention.self.qkv." in key else [(None, value)]
        for n, part in parts:
            state[key.replace(".qkv.", f".{n}.") if n else key] = torch.from_numpy(part.copy())
    net = RiskNet(cfg)
    want = {k for k in net.state_dict() if "word_embeddings" not in k and "position_ids" not in k}  # inputs_embeds: unused
    missing = sorted(want - state.keys())
    if missing:
        raise ValueError(f"{path}: not a graph of this exporter; weights not found: {missing[:4]}")
    net.load_state_dict({k: state[k] for k in want}, strict=False)
    return net.eval()


def parity(net: RiskNet, path: Path, batches: tuple[int, ...] = (1, 2, 7), lengths: tuple[int, ...] = (1, 5, WINDOW)) -> float:
    """Max |onnxruntime - torch| over the grid, at real positions only; raises if above 1e-4.
    A padded position's logit is nobody's answer (serving reads each window's last real
    position), and there the two differ: onnxruntime's Attention fills masked scores with
    -10000 where torch adds float32's minimum."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    net = net.eval()
    for b in batches:
        for t in lengths:
            feats, tokens, mask = example_inputs(b, t, seed=b * 100 + t)
            if b > 1 and t > 1:
                mask[-1, t // 2 :] = 0  # a padded row too
                tokens[0, :, N_TOKENS // 2 :] = 0  # and texts with fewer tokens than slots
            with torch.no_grad():
                ref = net(feats, tokens, mask).numpy()
            got = sess.run(OUTPUT_NAMES, {"feats": feats.numpy(), "tokens": tokens.numpy(), "mask": mask.numpy()})[0]
            valid = mask.numpy() > 0
            worst = max(worst, float(np.abs(ref - got)[valid].max()))
    if worst > 1e-4:
        raise AssertionError(f"ONNX parity failed: max abs difference {worst:.2e} > 1e-4")
    return worst
