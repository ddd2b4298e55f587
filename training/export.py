"""ONNX export with a parity check against torch at several batch sizes and lengths."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from moat.models.feature_spec import N_FEATURES, N_TOKENS, TOKEN_VOCAB, WINDOW
from moat.models.network import RiskNet

INPUT_NAMES = ["feats", "tokens", "mask"]
OUTPUT_NAMES = ["logits"]


def example_inputs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(batch, length, N_FEATURES, generator=g)
    tokens = torch.randint(0, TOKEN_VOCAB, (batch, length, N_TOKENS), generator=g)
    mask = torch.ones(batch, length)
    return feats, tokens, mask


def export_onnx(net: RiskNet, path: Path) -> None:
    net = net.eval()
    # Example sizes >= 2 on every dynamic axis, or the exporter specialises them to constants.
    args = example_inputs(2, 5)
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=1, max=WINDOW)
    dyn = {"feats": {0: batch, 1: length}, "tokens": {0: batch, 1: length}, "mask": {0: batch, 1: length}}
    with warnings.catch_warnings():
        # The exporter warns that both inputs share the "batch"/"length" axis names: intended.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(net, args, dynamo=True, dynamic_shapes=dyn, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, verbose=False)
    program.save(str(path))


def parity(net: RiskNet, path: Path, batches: tuple[int, ...] = (1, 2, 7), lengths: tuple[int, ...] = (1, 5, WINDOW)) -> float:
    """Max |onnxruntime - torch| over the grid; raises if above 1e-4."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    net = net.eval()
    for b in batches:
        for t in lengths:
            feats, tokens, mask = example_inputs(b, t, seed=b * 100 + t)
            if b > 1 and t > 1:
                mask[-1, t // 2 :] = 0  # a padded row too
            with torch.no_grad():
                ref = net(feats, tokens, mask).numpy()
            got = sess.run(OUTPUT_NAMES, {"feats": feats.numpy(), "tokens": tokens.numpy(), "mask": mask.numpy()})[0]
            valid = mask.numpy() > 0
            worst = max(worst, float(np.abs(ref - got)[valid].max()))
    if worst > 1e-4:
        raise AssertionError(f"ONNX parity failed: max abs difference {worst:.2e} > 1e-4")
    return worst
