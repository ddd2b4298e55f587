"""Where the network's time goes: onnxruntime's own profile of the bundle's graph, per operator,
in microseconds per scope window, at each batch size and thread count asked for.

The network is small (hidden width 32, 16 positions), so each operator's cost is mostly its
per-row and per-call overhead, not arithmetic: this shows which fused operators would repay a
different graph. Inputs are random windows of full length; the time of an operator does not
depend on the values. The wall time is measured on a session without profiling; the
operators' times come from a profiled one, whose own cost (a few µs per operator call) swamps
them at small batches.

Run: python benchmarks/bench_network_ops.py [--model models/default] [--batches 1 256] [--threads 1 2] [--runs 30] [--top 12]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from moat.models.bundle import load_bundle
from moat.models.feature_spec import N_FEATURES, N_TOKENS, TOKEN_VOCAB, WINDOW


def _session(onnx_path: Path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def profile(onnx_path: Path, batch: int, threads: int, runs: int, warmup: int = 5) -> tuple[float, Counter[str]]:
    """(wall µs per window without profiling, kernel µs per window by `op_type:node` over the
    last `runs` of `warmup + runs` profiled calls)."""
    rng = np.random.default_rng(0)
    feeds = {
        "feats": rng.random((batch, WINDOW, N_FEATURES), dtype=np.float32),
        "tokens": rng.integers(0, TOKEN_VOCAB, (batch, WINDOW, N_TOKENS), dtype=np.int64),
        "mask": np.ones((batch, WINDOW), dtype=np.float32),
    }
    plain = _session(onnx_path, threads)
    walls = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        plain.run(["logits"], feeds)
        if i >= warmup:
            walls.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = _session(onnx_path, threads, os.path.join(tmp, "ops"))
        for _ in range(warmup + runs):
            profiled.run(["logits"], feeds)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    # Keep the operators of the last `runs` calls: each call is one `model_run` span.
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    ops: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(a <= e["ts"] <= b for a, b in spans):
            ops[f"{e['args']['op_name']}:{e['name'].removesuffix('_kernel_time')}"] += e["dur"]
    per_window = len(spans) * batch
    return float(np.median(walls)) * 1e6 / batch, Counter({k: v / per_window for k, v in ops.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/default"), help="bundle directory (default: models/default)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="windows per call (default: 1 256)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="onnxruntime intra-op threads (default: 1)")
    ap.add_argument("--runs", type=int, default=30, help="profiled calls per case, after a warm-up (default: 30)")
    ap.add_argument("--top", type=int, default=12, help="operators listed per case (default: 12)")
    args = ap.parse_args()
    meta, onnx_path = load_bundle(args.model)
    print(f"{meta.model_version}: {onnx_path}")
    for threads in args.threads:
        for batch in args.batches:
            wall, ops = profile(onnx_path, batch, threads, args.runs)
            total = sum(ops.values())
            print(f"\nbatch {batch}, {threads} thread(s): wall {wall:.1f} µs per window, operators' kernels {total:.1f} µs per window")
            if total > wall:
                # Profiling costs a few µs per operator call: at small batches it is most of each entry.
                print("  (the kernels add up to more than the wall time: profiling's own cost dominates at this batch; read the shares at a large batch)")
            by_type: Counter[str] = Counter()
            for name, us in ops.items():
                by_type[name.split(":")[0]] += us
            print("  by operator type: " + ", ".join(f"{t} {us:.1f} ({us / total:.0%})" for t, us in by_type.most_common()))
            for name, us in ops.most_common(args.top):
                print(f"  {us:7.2f} µs  {us / total:5.1%}  {name}")


if __name__ == "__main__":
    main()
