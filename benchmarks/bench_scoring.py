"""Per-request costs on the scoring path, single-threaded: summarize + window, ONNX inference at
the default window, the whole Scorer, and `moat replay` throughput.
Usage: python benchmarks/bench_scoring.py [--trace PATH] [--replay-runs N]"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from moat.models.bundle import DEFAULT_BUNDLE, load_bundle
from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_TOKENS, WINDOW
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]


def per_call_us(fn, items) -> tuple[float, float]:
    times = []
    for it in items:
        t = time.perf_counter_ns()
        fn(it)
        times.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path)
    ap.add_argument("--replay-runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = args.trace
        if trace is None:
            subprocess.run([sys.executable, "-m", "moat", "generate", "--out", tmp, "--actors", "200", "--days", "1", "--seed", "2", "--no-progress"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            trace = Path(tmp) / "test.jsonl"
        events = [Event.model_validate(r) for r in itertools.islice(iter_raw(trace), 30000)]

        # 1. summarize + window (one scope), warm state per account.
        states: dict[str, ScopeState] = {}

        def feat(e: Event) -> None:
            window(states.setdefault(e.account_id, ScopeState()), summarize(e), Crowd(), "account")

        p50, p99 = per_call_us(feat, events[:20000])
        print(f"summarize + window (account scope): p50 {p50:.0f} us, p99 {p99:.0f} us per request")

        # 2. ONNX at the default window, one thread.
        _, onnx = load_bundle(DEFAULT_BUNDLE)
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx), o, providers=["CPUExecutionProvider"])
        for b in (1, 3):
            feed = {"feats": np.random.rand(b, WINDOW, N_FEATURES).astype(np.float32), "tokens": np.random.randint(0, 4096, (b, WINDOW, N_TOKENS)), "mask": np.ones((b, WINDOW), np.float32)}
            p50, p99 = per_call_us(lambda _: sess.run(None, feed), range(3000))
            print(f"ONNX, batch {b} x window {WINDOW}, 1 thread: p50 {p50:.0f} us, p99 {p99:.0f} us")

        # 3. The whole Scorer per request (state, features for every scope, ONNX, policy).
        sc = Scorer(ServingSettings(time_source="caller"))
        p50, p99 = per_call_us(sc.score, events[:5000])
        print(f"Scorer.score (all scopes): p50 {p50:.0f} us, p99 {p99:.0f} us per request")

        # 4. moat replay end to end (parse, score, write), as a user runs it. This shared machine's
        # speed drifts by tens of percent over minutes, so report the median of several runs.
        out = Path(tmp) / "scores.jsonl"
        n = sum(1 for _ in iter_raw(trace))
        rates = []
        for _ in range(args.replay_runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "moat", "replay", str(trace), "-o", str(out), "--no-progress"], check=True, stderr=subprocess.DEVNULL, cwd=ROOT)
            rates.append(n / (time.perf_counter() - t0))
        print(f"moat replay: {n} events, {len(rates)} runs: median {statistics.median(rates):,.0f} events/s "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}; start-up included)")


if __name__ == "__main__":
    main()
