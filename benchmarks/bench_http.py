"""Latency of POST /score at a fixed open-loop rate, and throughput at saturation, for Moat and
for a trivial BentoML endpoint in the same run (the ratio is what to compare on a shared,
noisy machine). The load generator runs on the same machine as the server. It also prints
the server's CPU time per request during the fixed-rate phase (all of `bentoml serve`'s
processes), which varies far less than latency on a shared machine.
The events are dev-spread's first 20,000 (real prompts and multi-turn histories, as issue 13 asks)
when ../shared holds it, else a generated simulator trace's; `--trace` chooses another.
Usage: python benchmarks/bench_http.py [--rate 200] [--seconds 15] [--trace PATH] [--moat-env VAR=VALUE ...] [--rounds N]"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from closed_loop import closed_loop

from moat.models.traces import iter_raw

ROOT = Path(__file__).resolve().parents[1]
DEV_SPREAD = ROOT.parent / "shared" / "data" / "external" / "dev-spread.jsonl.gz"
LABELS = ("label", "family", "actor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(target: str, workdir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), "--host", "127.0.0.1", "--working-dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{target} did not start")


def open_loop(url: str, events: list[dict], rate: float, seconds: float, threads: int = 8) -> np.ndarray:
    """Fixed arrival schedule (open loop): request i is due at i / rate, whatever came before.
    Latency counts from the due time, so a stalled server cannot hide queueing (no coordinated
    omission). Plain keep-alive http.client connections keep the generator's own cost low."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps(e).encode() for e in events]
    n = int(rate * seconds)
    lat = np.zeros(n)
    start = time.perf_counter() + 0.2

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for i in range(w, n, threads):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request("POST", "/score", body=bodies[i % len(bodies)], headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            lat[i] = time.perf_counter() - due
        conn.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return lat * 1000


def saturate(url: str, events: list[dict], seconds: float, threads: int = 8) -> float:
    """Closed loop: `threads` keep-alive clients post events back to back; completed requests per second."""
    bodies = [json.dumps(e).encode() for e in events]

    def send(conn: http.client.HTTPConnection, i: int) -> None:
        conn.request("POST", "/score", body=bodies[i % len(bodies)], headers={"content-type": "application/json"})
        conn.getresponse().read()

    return closed_loop(url, send, seconds, threads)


def calls_per_batch(url: str) -> float | None:
    """Mean /score calls per network batch so far, from Moat's /metrics (None for a server
    without that metric)."""
    found = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("moat_score_calls_together_sum", "moat_score_calls_together_count"):
            found[name] = float(value)
    count = found.get("moat_score_calls_together_count")
    return found["moat_score_calls_together_sum"] / count if count else None


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time of a process and all its children (bentoml serve runs the service in a child)."""
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--trace", type=Path, help="events to post (default: dev-spread when present, else a simulator trace)")
    ap.add_argument("--moat-env", action="append", default=[], metavar="VAR=VALUE", help="also run Moat with this setting (e.g. MOAT_COALESCE=1; several, space-separated, in one quoted argument), in the same run; repeatable")
    ap.add_argument("--rounds", type=int, default=1, help="run every server this many times, taking turns; ratios of the medians")
    args = ap.parse_args()
    trace = args.trace or (DEV_SPREAD if DEV_SPREAD.is_file() else None)
    if trace is not None:
        events = [{k: v for k, v in e.items() if k not in LABELS} for e in itertools.islice(iter_raw(trace), 20000)]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "moat", "generate", "--out", tmp, "--actors", "150", "--days", "1", "--seed", "4", "--no-progress"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            events = [{k: v for k, v in e.items() if k not in LABELS} for e in itertools.islice(iter_raw(Path(tmp) / "test.jsonl"), 20000)]
    print(f"events: {len(events):,} from {trace or 'a generated simulator trace (seed 4)'}")
    servers = [("trivial", "trivial_service:Trivial", ROOT / "benchmarks", {}), ("moat", "moat.serving.service:MoatService", ROOT, {})]
    servers += [(f"moat {kv}", "moat.serving.service:MoatService", ROOT, dict(pair.split("=", 1) for pair in kv.split())) for kv in args.moat_env]
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, *_ in servers}
    for r in range(args.rounds):  # rounds alternate the servers, so a slow phase of the machine hits each
        for name, target, wd, env in servers:
            proc, url = start(target, wd, env)
            try:
                open_loop(url, events[:200], 50, 2)  # warm-up
                before = cpu_seconds(proc)
                lat = open_loop(url, events, args.rate, args.seconds)
                cpu_ms = 1000 * (cpu_seconds(proc) - before) / len(lat)
                sat = saturate(url, events, 10)
                together = calls_per_batch(url)
            finally:
                proc.terminate()
                proc.wait(10)
            runs[name].append((float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), sat, cpu_ms))
            p50, p99, sat, cpu_ms = runs[name][-1]
            batched = f" ({together:.1f} calls per network batch over the run)" if together else ""
            print(f"{name:8s} at {args.rate:.0f} req/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, CPU {cpu_ms:.2f} ms/request; saturation {sat:,.0f} req/s{batched}" + (f" (round {r + 1})" if args.rounds > 1 else ""))
    results = {name: tuple(float(np.median(col)) for col in zip(*rows)) for name, rows in runs.items()}
    t = results["trivial"]
    for name, m in results.items():
        if name != "trivial":
            print(f"{name} / trivial{' (medians over rounds)' if args.rounds > 1 else ''}: p50 x{m[0] / t[0]:.2f} (goal <= 1.3), p99 x{m[1] / t[1]:.2f}, saturation x{m[2] / t[2]:.2f} (goal >= 0.8); CPU per request +{m[3] - t[3]:.2f} ms")


if __name__ == "__main__":
    main()
