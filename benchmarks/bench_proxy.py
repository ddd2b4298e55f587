"""Added latency of `moat proxy` over calling the upstream directly, at a fixed open-loop rate.

One run sends the same chat/completions requests to a fake OpenAI upstream directly and through
`moat proxy` (identity, Event, the in-process Scorer with the shipped model, then forwarding),
interleaved so that both see the same machine load; each path gets `--rate` requests per
second. The thresholds are set above any risk so every request is scored and then allowed:
this measures the path every benign request takes. 50 accounts, one bearer key each.
Besides latency it prints the CPU time each process spent per request it served, which varies
far less than latency on a shared machine, and each path's saturation: `--threads` keep-alive
clients sending back to back for `--saturate` seconds, one path after the other (the proxy's
figure includes the upstream's work, so read it against the direct one).
`--proxy-env VAR=VALUE` runs a second proxy with that setting beside the first, in the same
run (for example MOAT_PROXY_COALESCE=1: each request scored alone).
Goal: p50 at most 2 ms above direct at 200 req/s.
Usage: python benchmarks/bench_proxy.py [--rate 200] [--seconds 15] [--saturate 10]
       [--proxy-env VAR=VALUE ...]"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from closed_loop import closed_loop

ROOT = Path(__file__).resolve().parents[1]
NEVER = "1.0001"
UPSTREAM = "import sys, uvicorn; from tests.serving.fake_upstream import Seen, build_upstream; uvicorn.run(build_upstream(Seen()), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')"
PROXY = "import argparse, sys; from moat.serving import proxy_cli as c; p = argparse.ArgumentParser(); c.add_arguments(p); sys.exit(c.run(p.parse_args(sys.argv[1:])))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(code: str, args: list[str], ready: str, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{ready} did not come up")


BODIES = [json.dumps({"model": "fake", "messages": [{"role": "user", "content": f"Translate sentence {i} into French, please."}], "logprobs": True, "top_logprobs": 2}).encode() for i in range(200)]


def send(conn: http.client.HTTPConnection, i: int, target: str) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer sk-bench-{i % 50}"}
    conn.request("POST", "/v1/chat/completions", body=BODIES[i % len(BODIES)], headers=headers)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{target}: status {resp.status}")


def open_loop(targets: list[str], rate: float, seconds: float, threads: int = 8) -> list[np.ndarray]:
    """Request i goes to targets[i % len(targets)], due at i / (rate * len(targets)): each target
    gets `rate` per second. Latency counts from the due time (no coordinated omission)."""
    k = len(targets)
    n = int(rate * seconds) * k
    total_rate = rate * k
    lat = np.zeros(n)
    start = time.perf_counter() + 0.2

    def worker(w: int) -> None:
        conns = [http.client.HTTPConnection(*t.removeprefix("http://").split(":"), timeout=10) for t in targets]
        for i in range(w, n, threads):
            due = start + i / total_rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            send(conns[i % k], i // k, targets[i % k])
            lat[i] = time.perf_counter() - due
        for c in conns:
            c.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return [lat[j::k] * 1000 for j in range(k)]


def saturate(target: str, seconds: float, threads: int) -> float:
    """Closed loop: `threads` keep-alive clients send back to back; completed requests per second."""
    return closed_loop(target, lambda conn, i: send(conn, i, target), seconds, threads)


def cpu_seconds(proc: subprocess.Popen) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def scorer_alone(n: int = 500) -> tuple[float, float]:
    """p50 and p99 (ms) of one Scorer.score in this process, on the same kind of event: the part
    of the added latency that is the model's, to read the figures against on a noisy machine."""
    from moat.serving.proxy import IdentityResolver, ProxySettings, openai_event
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    scorer = Scorer(ServingSettings())
    resolver = IdentityResolver(ProxySettings())
    body = {"model": "fake", "messages": [{"role": "user", "content": "Translate sentence 1 into French, please."}], "logprobs": True, "top_logprobs": 2}
    lat = []
    for i in range(n):
        event = openai_event(body, "/v1/chat/completions", resolver.resolve({"authorization": f"Bearer sk-bench-{i % 50}"}, "127.0.0.1"), "bench", f"r{i}", time.time())
        t = time.perf_counter()
        scorer.score(event)
        lat.append(time.perf_counter() - t)
    p50, p99 = np.percentile(np.array(lat[50:]) * 1000, [50, 99])
    return float(p50), float(p99)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second on each path")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--saturate", type=float, default=10.0, help="seconds of closed-loop load on each path (0: skip)")
    ap.add_argument("--threads", type=int, default=8, help="keep-alive clients in the saturation phase")
    ap.add_argument("--proxy-env", action="append", default=[], metavar="VAR=VALUE", help="also run a proxy with this setting, in the same run; repeatable")
    args = ap.parse_args()
    bad = [kv for kv in args.proxy_env if "=" not in kv]
    if bad:
        ap.error(f"--proxy-env takes VAR=VALUE, got {bad[0]!r}")
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    env = {"MOAT_THROTTLE_THRESHOLD": NEVER, "MOAT_PERTURB_THRESHOLD": NEVER, "MOAT_BLOCK_THRESHOLD": NEVER}
    names, targets = ["direct"], [upstream]
    procs = [start(UPSTREAM, [str(up_port)], upstream + "/v1/models", {})]
    try:
        for extra in [{}, *(dict([kv.split("=", 1)]) for kv in args.proxy_env)]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            procs.append(start(PROXY, ["--upstream", upstream, "--port", str(port), "--host", "127.0.0.1"], url + "/v1/models", {**env, **extra}))
            names.append(" ".join(["moat proxy", *(f"{k}={v}" for k, v in extra.items())]))
            targets.append(url)
        open_loop(targets, rate=50, seconds=2)  # warm every path (connections, first scores)
        before = [cpu_seconds(p) for p in procs]
        lats = open_loop(targets, args.rate, args.seconds)
        cpus = [cpu_seconds(p) - b for p, b in zip(procs, before)]
        sats = [saturate(t, args.saturate, args.threads) if args.saturate > 0 else float("nan") for t in targets]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    s50, s99 = scorer_alone()
    n = len(lats[0])
    d50, d99 = np.percentile(lats[0], [50, 99])
    print(f"proxy bench: {args.rate:.0f} req/s per path for {args.seconds:.0f} s ({n} requests each), chat/completions, every request scored then allowed")
    width = max(len(name) for name in names)
    for name, lat, sat in zip(names, lats, sats):
        p50, p99 = np.percentile(lat, [50, 99])
        added = "" if name == "direct" else f"  added p50 {p50 - d50:+6.2f} ms  p99 {p99 - d99:+6.2f} ms (goal: p50 <= +2 ms)"
        saturation = f";  saturation {sat:,.0f} req/s ({sat / sats[0]:.2f}x direct)" if args.saturate > 0 else ""
        print(f"  {name:{width}s}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms{added}{saturation}")
    # The upstream serves every path; each proxy its own.
    per_proxy = ", ".join(f"{name} {1000 * cpu / n:.2f} ms" for name, cpu in zip(names[1:], cpus[1:]))
    print(f"  CPU per request at {args.rate:.0f} req/s: upstream {1000 * cpus[0] / (len(targets) * n):.2f} ms, {per_proxy}")
    print(f"  of which the Scorer alone (same events, in process): p50 {s50:.2f} ms  p99 {s99:.2f} ms;  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
