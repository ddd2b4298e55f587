"""Redis state against memory state on realistic traffic, in one run: the time a request takes
through the Scorer with each, the Redis commands and round trips it costs, and what Redis keeps
per active account. With --hang, also POST /score latency while Redis hangs (SIGSTOP).

The first --events events of dev-spread (real prompts, growing multi-turn histories) are scored
at their own times, each event through a memory-state Scorer and then a Redis-state Scorer (a
redis-server this script starts on a free port; --cluster: a three-master Redis Cluster),
alternating, so both see the machine at the same moments. Round trips are the store's own
count of exchanges it waited for; commands are Redis's INFO commandstats, the script calls
themselves and the commands they run.
Then Redis memory per account that sent 1 and 16 requests (synthetic accounts, as
bench_state_memory.py measures memory state).
Usage: python benchmarks/bench_redis.py [--trace PATH] [--events 5000] [--cluster] [--hang]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis

from moat.models.events import TRACE_LABEL_FIELDS, Event
from moat.models.featurizer import Featurizer
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state.redis_store import RedisStore

ROOT = Path(__file__).resolve().parents[1]
DEV_SPREAD = ROOT.parent / "shared" / "data" / "external" / "dev-spread.jsonl.gz"
KINDS = {"s": "scopes", "h": "holds", "c": "campaign sketch", "k": "cohort sketch"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


@contextmanager
def redis_server(cluster: bool) -> Iterator[tuple[str, list[int]]]:
    """A private redis-server, or three masters joined by `redis-cli --cluster create`: the
    URL to give Moat and every node's port."""
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port() for _ in range(3 if cluster else 1)]
        procs = []
        try:
            for port in ports:
                workdir = Path(tmp) / str(port)
                workdir.mkdir()
                # The bus port is named: the default, port + 10000, may be taken or past 65535.
                procs.append(_server(port, workdir, *(("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port())) if cluster else ())))
            if cluster:
                subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"], check=True, stdout=subprocess.DEVNULL)
                for _ in range(100):
                    if all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in ports):
                        break
                    time.sleep(0.1)
            yield f"redis://127.0.0.1:{ports[0]}/0", ports
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def commandstats(ports: list[int]) -> Counter:
    out: Counter = Counter()
    for port in ports:
        for name, stat in redis.Redis(port=port).info("commandstats").items():
            out[name.removeprefix("cmdstat_")] += stat["calls"]
    return out


def redis_cpu_s(ports: list[int]) -> float:
    """CPU seconds the Redis servers have used (user + system): what sizing shards needs."""
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (redis.Redis(port=p).info("cpu") for p in ports))


def usage_by_kind(store: RedisStore, ports: list[int]) -> Counter:
    """MEMORY USAGE summed over this store's keys, by kind (s: scope, h: hold, c: campaign, k: cohort)."""
    out: Counter = Counter()
    for port in ports:
        r = redis.Redis(port=port)
        for k in r.scan_iter(f"{store.prefix}:*", count=1000):
            out[k.decode().split(":")[2]] += r.memory_usage(k, samples=0) or 0
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def compare(events: list[Event], url: str, ports: list[int], cluster: bool, warmup: int) -> None:
    memory = Scorer(ServingSettings(time_source="caller"))
    shared = Scorer(ServingSettings(time_source="caller", state=url, redis_cluster=cluster, redis_timeout_s=1.0))
    store = shared.store
    assert isinstance(store, RedisStore)
    for e in events[:warmup]:  # imports, first calls, the script load: out of the figures
        memory.score(e)
        shared.score(e)
    before, trips0, calls0, retries0 = commandstats(ports), store.round_trips, store.runner.calls, store.retries
    cpu0 = redis_cpu_s(ports)
    t_mem, t_redis, diff = [], [], []
    for e in events[warmup:]:
        t0 = time.perf_counter_ns()
        memory.score(e)
        t1 = time.perf_counter_ns()
        shared.score(e)
        t2 = time.perf_counter_ns()
        t_mem.append((t1 - t0) / 1e3)
        t_redis.append((t2 - t1) / 1e3)
        diff.append((t2 - t1 - (t1 - t0)) / 1e3)
    n = len(events) - warmup
    cpu = redis_cpu_s(ports) - cpu0
    stats = commandstats(ports) - before
    stats.pop("info", None)
    assert shared.counters.store_fallbacks == 0, "the Redis scorer fell back to local state: the figures would not be Redis's"
    for name, t in (("memory", t_mem), ("redis" + (" cluster" if cluster else ""), t_redis)):
        print(f"Scorer.score, {name:13s}: p50 {statistics.median(t):6.0f} us, p99 {pct(t, 99):6.0f} us per request")
    print(f"added by Redis: p50 {statistics.median(t_redis) - statistics.median(t_mem):.0f} us (goal <= 400 us); per request, paired: p50 {statistics.median(diff):.0f} us, p99 {pct(diff, 99):.0f} us")
    scripts = stats.get("evalsha", 0) + stats.get("eval", 0)
    print(f"round trips per request: {(store.round_trips - trips0) / n:.2f} ({(store.runner.calls - calls0) / n:.2f} script calls, {(store.retries - retries0) / n:.3f} sent again)")
    print(f"Redis commands per request: {sum(stats.values()) / n:.1f} executed, of which {scripts / n:.2f} sent by the client as scripts (INFO commandstats)")
    print("  " + ", ".join(f"{k} {v / n:.2f}" for k, v in stats.most_common()))
    print(f"Redis server CPU per request: {cpu / n * 1e6:.0f} us (INFO cpu, all nodes): one Redis core serves about {n / max(cpu, 1e-9):,.0f} requests/s")
    accounts = len({e.account_id for e in events})
    usage = usage_by_kind(store, ports)
    parts = ", ".join(f"{KINDS.get(kind, kind)} {b / accounts:,.0f}" for kind, b in usage.most_common())
    print(f"Redis memory per active account ({accounts} accounts, {len(events) / accounts:.0f} requests each on average): {sum(usage.values()) / accounts:,.0f} bytes (MEMORY USAGE; {parts}; goal <= 1,024)")


def per_account(url: str, ports: list[int], cluster: bool, accounts: int, requests: list[int]) -> None:
    """Redis memory per account that sent 1, 16, ... requests, each with its own key and /24 (as
    bench_state_memory.py measures memory state), through the serving featurisation path."""
    from bench_state_memory import events as synthetic

    for n in requests:
        store = RedisStore(url, cluster=cluster, timeout_s=1.0)
        store.flush()
        featurizer = Featurizer(store)
        for e in synthetic(accounts, n, templates=accounts, seed=n):
            featurizer.step(e)
        usage = usage_by_kind(store, ports)
        parts = ", ".join(f"{KINDS.get(kind, kind)} {b / accounts:,.0f}" for kind, b in usage.most_common())
        print(f"Redis memory per account with {n} request(s), three scopes each: {sum(usage.values()) / accounts:,.0f} bytes ({parts})")


def hang(events: list[dict], url: str, ports: list[int], cluster: bool, rate: float, seconds: float) -> None:
    """POST /score at a fixed open-loop rate against a service on Redis state: a third of the
    time before, a third with Redis stopped (SIGSTOP), a third after it resumes; first the same
    against a service on memory state, as the reference of this machine at this moment."""
    from bench_http import open_loop, start

    pid = int(redis.Redis(port=ports[0]).info("server")["process_id"])
    phases = {}
    for state in ("memory", url):
        os.environ.update({"MOAT_STATE": state, "MOAT_REDIS_CLUSTER": str(cluster).lower()})
        proc, service = start("moat.serving.service:MoatService", ROOT)
        try:
            open_loop(service, events[:200], 50, 2)  # warm-up
            for phase in ("before", "hung", "after") if state == url else ("memory state",):
                if phase == "hung":
                    os.kill(pid, signal.SIGSTOP)
                try:
                    phases[phase] = open_loop(service, events, rate, seconds / 3)
                finally:
                    if phase == "hung":
                        os.kill(pid, signal.SIGCONT)
        finally:
            proc.terminate()
            proc.wait(10)
    for phase, lat in phases.items():
        name = phase if phase == "memory state" else f"Redis {phase}"
        print(f"/score at {rate:.0f} req/s, {name:12s}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {lat.max():.1f} ms, {(lat > 50).sum()} of {len(lat)} over the client's 50 ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--trace", type=Path, default=DEV_SPREAD)
    ap.add_argument("--events", type=int, default=5000, help="events from the start of the trace")
    ap.add_argument("--warmup", type=int, default=200, help="events scored before timing starts")
    ap.add_argument("--cluster", action="store_true", help="a three-master Redis Cluster instead of one redis-server")
    ap.add_argument("--accounts", type=int, default=500, help="accounts for the per-account memory figures")
    ap.add_argument("--requests", type=int, nargs="*", default=[1, 16], help="requests per account, one memory figure each")
    ap.add_argument("--hang", action="store_true", help="also measure POST /score while Redis hangs")
    ap.add_argument("--rate", type=float, default=100, help="--hang: requests per second")
    ap.add_argument("--seconds", type=float, default=30, help="--hang: the whole run, a third hung")
    args = ap.parse_args()
    raws = list(itertools.islice(iter_raw(args.trace), args.events))
    events = [Event.model_validate(r) for r in raws]
    print(f"{len(events):,} events of {args.trace.name}, {len({e.account_id for e in events})} accounts; Redis {'cluster of 3 masters' if args.cluster else 'one server'}, on this machine")
    with redis_server(args.cluster) as (url, ports):
        compare(events, url, ports, args.cluster, args.warmup)
        per_account(url, ports, args.cluster, args.accounts, args.requests)
        if args.hang:
            hang([{k: v for k, v in r.items() if k not in TRACE_LABEL_FIELDS} for r in raws], url, ports, args.cluster, args.rate, args.seconds)


if __name__ == "__main__":
    main()
