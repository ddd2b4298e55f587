"""The GPU tier (issue 13): the shipped network on an accelerator, scope windows scored per second
by batch size, and the latency that micro-batching adds at a given arrival rate.

The windows are real: the first events of dev-spread featurised by the serving scorer (its own
windows, as `moat replay` packs them), tiled to each batch size. Each runner scores them as the
serving path does, numpy in and logits out, so host-device copies are counted:
- `ort-cpu-1`, `ort-cpu-all`: onnxruntime's CPU provider on one thread and on every core, the
  figures to compare with in the same run;
- `ort-cuda`: onnxruntime's CUDA provider as serving runs it (MOAT_ONNX_PROVIDER=cuda, TF32 off),
  where onnxruntime-gpu is installed, and `ort-cuda-tf32` with onnxruntime's default TF32 on;
- `torch-cuda` (with --torch): the same weights through PyTorch on CUDA, read from the ONNX file.
Every runner is first checked against `ort-cpu-1` on the same windows (largest logit difference).

The micro-batcher: requests arrive as a Poisson stream at each rate (virtual arrival times, real
network calls); a batch closes when `--max-batch` windows wait or the oldest has waited
`--max-wait-ms`, and runs at once. The latency it adds to a request is its wait plus its batch's
run; a rate the runner cannot keep up with is marked "saturated" (it ends far behind the last
arrival).

Usage: python benchmarks/bench_gpu.py [--trace PATH] [--events N] [--batches B ...]
       [--rates R ...] [--max-wait-ms W ...] [--max-batch B] [--seconds S] [--torch]"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from moat.models.bundle import DEFAULT_BUNDLE, load_bundle
from moat.models.events import Event
from moat.models.feature_spec import WINDOW
from moat.models.traces import iter_lines
from moat.serving.scorer import CUDA_PROVIDER, Batch, CallerClock, Provider, Scorer, provider_name
from moat.serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
DEV_SPREAD = ROOT.parent / "shared" / "data" / "external" / "dev-spread.jsonl.gz"
Run = Callable[[Batch], np.ndarray]


def real_windows(trace: Path, events: int) -> Batch:
    """Every own window of the first `events` events, padded to the full window, as a pool."""
    sc = Scorer(ServingSettings(time_source="caller"))
    steps = [sc._step(Event.model_validate_json(x), CallerClock())[0] for x in itertools.islice(iter_lines(trace), events)]
    own = sc._plan(steps).own
    pad = WINDOW - own.mask.shape[1]
    grow = lambda a: np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    return Batch(grow(own.feats), grow(own.tokens), grow(own.mask), own.last)


def tiled(pool: Batch, n: int) -> Batch:
    """`n` windows from the pool, repeated: contiguous, so a slice of it is a batch without a copy."""
    idx = np.arange(n) % len(pool.last)
    return pool.take(idx)


def ort_runner(onnx: Path, provider: Provider, threads: int) -> Run:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    name = provider_name(provider)
    sess = ort.InferenceSession(str(onnx), opts, providers=[provider] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else []))
    if sess.get_providers()[0] != name:
        raise RuntimeError(f"{name} did not start (running on {sess.get_providers()})")

    def run(b: Batch) -> np.ndarray:
        out = sess.run(["logits"], {"feats": b.feats, "tokens": b.tokens, "mask": b.mask})[0]
        return out[np.arange(len(out)), b.last]

    return run


def torch_runner(onnx: Path, meta_net: dict, device: str = "cuda") -> Run:
    """The bundle's weights in the torch network on CUDA, read back from its ONNX file."""
    import torch

    from moat.models.network import NetConfig
    from moat.training.export import weights_from_onnx

    net = weights_from_onnx(onnx, NetConfig(**meta_net))
    dev = torch.device(device)
    net = net.eval().to(dev)

    def run(b: Batch) -> np.ndarray:
        with torch.inference_mode():
            feats = torch.from_numpy(b.feats).to(dev, non_blocking=True)
            tokens = torch.from_numpy(b.tokens).to(dev, non_blocking=True)
            mask = torch.from_numpy(b.mask).to(dev, non_blocking=True)
            logits = net(feats, tokens, mask)
            return logits[torch.arange(len(b.last), device=dev), torch.from_numpy(b.last).to(dev)].cpu().numpy()

    return run


def batch_table(name: str, run: Run, big: Batch, batches: list[int], budget_s: float) -> dict[int, float]:
    """Per batch size: p50 and p99 of one call, and windows/s. Returns p50 seconds per size."""
    out = {}
    for b in batches:
        part = big.take(np.arange(b)) if b <= len(big.last) else tiled(big, b)
        run(part)
        times: list[float] = []
        t_end = time.perf_counter() + budget_s
        while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 2000):
            t0 = time.perf_counter()
            run(part)
            times.append(time.perf_counter() - t0)
        p50, p99 = statistics.median(times), float(np.percentile(times, 99))
        out[b] = p50
        print(f"  {name:12s} batch {b:>6,}: p50 {p50 * 1e3:8.3f} ms, p99 {p99 * 1e3:8.3f} ms per call; {b / p50:>12,.0f} windows/s ({len(times)} calls)")
    return out


def micro_batch(run: Run, big: Batch, rate: float, max_wait: float, max_batch: int, seconds: float) -> tuple[float, float, float, bool]:
    """Latency added per request (p50, p99, seconds) and the rate served, at Poisson arrivals."""
    n = int(rate * seconds)
    arrivals = np.cumsum(np.random.default_rng(0).exponential(1 / rate, n))
    lat = np.empty(n)
    pool = len(big.last) - max_batch
    i, t0 = 0, time.perf_counter()
    while i < n:
        now = time.perf_counter() - t0
        if now > 3 * seconds + 1:  # far behind: the rest would only lengthen the run
            break
        full = arrivals[min(i + max_batch, n) - 1]
        if now < min(arrivals[i] + max_wait, full):
            continue  # spin: the batch is neither full nor due
        j = min(int(np.searchsorted(arrivals, now, side="right")), i + max_batch)
        a = i % pool
        run(Batch(big.feats[a : a + j - i], big.tokens[a : a + j - i], big.mask[a : a + j - i], big.last[a : a + j - i]))
        lat[i:j] = time.perf_counter() - t0 - arrivals[i:j]
        i = j
    elapsed = time.perf_counter() - t0
    lat = lat[:i]
    # A runner that keeps up ends shortly after the last arrival; one that cannot ends far behind.
    saturated = i < n or elapsed - arrivals[i - 1] > max(0.1 * seconds, 10 * max_wait)
    served = i / elapsed
    return float(np.median(lat)), float(np.percentile(lat, 99)), served, bool(saturated)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path, default=DEV_SPREAD)
    ap.add_argument("--events", type=int, default=3000, help="events featurised for the window pool")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128, 1024, 4096, 16384, 65536])
    ap.add_argument("--rates", type=float, nargs="+", default=[10_000, 100_000, 1_000_000], help="windows/s arriving at the micro-batcher")
    ap.add_argument("--max-wait-ms", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--max-batch", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=1.0, help="arrivals per micro-batcher run")
    ap.add_argument("--budget-s", type=float, default=1.5, help="timing per batch size and runner")
    ap.add_argument("--cpu-max-batch", type=int, default=4096, help="the largest batch timed on the CPU runners")
    ap.add_argument("--torch", action="store_true", help="also run the network through PyTorch on CUDA")
    args = ap.parse_args()

    meta, onnx = load_bundle(DEFAULT_BUNDLE)
    t0 = time.perf_counter()
    pool = real_windows(args.trace, args.events)
    print(f"window pool: {len(pool.last):,} own windows of the first {args.events:,} events of {args.trace.name} ({time.perf_counter() - t0:.1f} s)")
    big = tiled(pool, max(max(args.batches), args.max_batch * 2))

    runners: dict[str, Run] = {"ort-cpu-1": ort_runner(onnx, "CPUExecutionProvider", 1), "ort-cpu-all": ort_runner(onnx, "CPUExecutionProvider", os.cpu_count() or 1)}
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}; {os.cpu_count()} CPUs")
    if args.torch:
        import torch  # noqa: F401  loads the CUDA and cuDNN libraries onnxruntime-gpu links to, where torch has them
    if "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):  # the same from the nvidia-* wheels, where installed
            try:
                ort.preload_dlls()
            except OSError as exc:
                print(f"onnxruntime.preload_dlls: {exc}")
        try:
            # As serving runs it (TF32 off), and with onnxruntime's default TF32 for comparison.
            runners["ort-cuda"] = ort_runner(onnx, CUDA_PROVIDER, 1)
            runners["ort-cuda-tf32"] = ort_runner(onnx, ("CUDAExecutionProvider", {"use_tf32": "1"}), 1)
        except RuntimeError as exc:  # CUDA or cuDNN libraries missing: say so, measure the rest
            print(f"ort-cuda: {exc}")
    else:
        print("ort-cuda: onnxruntime-gpu is not installed here")
    if args.torch:
        import torch

        if torch.cuda.is_available():
            runners["torch-cuda"] = torch_runner(onnx, meta.net)
            print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
        else:
            print("torch-cuda: no CUDA device")

    check = big.take(np.arange(min(4096, len(big.last))))
    want = runners["ort-cpu-1"](check)
    for name, run in runners.items():
        diff = float(np.abs(run(check) - want).max())
        print(f"  {name}: largest logit difference from ort-cpu-1 on {len(check.last):,} windows: {diff:.2e}")
        # TF32 rounds products to 10 mantissa bits; anything else differs in float32 rounding
        # only, so more means a wrong runner (torch's weights matched to the wrong MatMul, say).
        if diff > (1e-2 if name.endswith("tf32") else 1e-4):
            raise SystemExit(f"{name} does not compute the bundle's network (logits differ by {diff:.2e})")

    print("one call per batch (numpy in, logits out):")
    # A CPU call on 65,536 windows takes seconds: the CPU rows stop at --cpu-max-batch.
    p50s = {name: batch_table(name, run, big, [b for b in args.batches if "cpu" not in name or b <= args.cpu_max_batch], args.budget_s) for name, run in runners.items()}
    one_thread = max(b / t for b, t in p50s["ort-cpu-1"].items())
    for name, table in p50s.items():
        best = max(table, key=lambda b: b / table[b])
        print(f"  {name}: best {best / table[best]:,.0f} windows/s at batch {best:,}, {best / table[best] / one_thread:.1f}x one CPU thread's best")

    print(f"micro-batcher (a batch closes at {args.max_batch:,} windows or after the wait; Poisson arrivals, {args.seconds:g} s each):")
    for name, run in runners.items():
        if name == "ort-cpu-1":
            continue
        for rate, wait in itertools.product(args.rates, args.max_wait_ms):
            p50, p99, served, saturated = micro_batch(run, big, rate, wait / 1e3, args.max_batch, args.seconds)
            note = "  SATURATED: a backlog grows" if saturated else ""
            print(f"  {name:12s} {rate:>10,.0f} windows/s, wait {wait:g} ms: added latency p50 {p50 * 1e3:7.2f} ms, p99 {p99 * 1e3:7.2f} ms; served {served:,.0f}/s{note}")


if __name__ == "__main__":
    main()
