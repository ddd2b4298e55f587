"""Memory that serving keeps per active account: the account, API-key and address-block scopes
each account opens, plus its share of the campaign sketch.

Real events go through the serving featurisation path (Featurizer over a MemoryStore), each
account with its own key and its own /24, so every account opens all three scopes (an address
block shared by many accounts would cost less). Prompts start with one of `--templates` phrasings
and then vary, so the campaign sketch sees templates shared across accounts, as a gateway does.

Two measures, each in a fresh child process: tracemalloc (Python and numpy allocations, split by
where they were made) and the growth of resident memory (everything, allocator overhead included).
With --flood N: N distinct accounts, keys and /24s of one request each through a store bounded
as serving bounds it (--max-scopes, --max-templates), printing resident memory as they arrive:
it must stop growing once the bounds are reached.
With --sketch-speed: the time of one campaign-sketch call, with many templates and with one
template at its cap of accounts where every call evicts one (the sketch's worst case).
Usage: python benchmarks/bench_state_memory.py [--accounts N] [--requests 1 16 64] [--separate]
       python benchmarks/bench_state_memory.py --flood 10000000 --max-scopes 300000
       python benchmarks/bench_state_memory.py --sketch-speed
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import random
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.state import CampaignSketch
from moat.models.summary import SKETCHES

# Where an allocation is made says what it is. Strings are made when a request is parsed and
# kept by whatever holds them: scope keys, and the sketch's account entries (one per template).
PARTS = {"memory_store.py": "scope index", "scope_window.py": "scope arrays", "featurizer.py": "scope arrays", "state.py": "campaign sketch"}
OTHER = "ids and strings"
WORDS = [f"w{i:04d}" for i in range(4000)]


@dataclass(frozen=True)
class Result:
    accounts: int
    requests: int
    scopes: int
    templates: int
    sketch_entries: int
    bytes_by_part: dict[str, int]
    rss_bytes: int | None


def events(accounts: int, requests: int, templates: int, seed: int) -> Iterator[Event]:
    rng = random.Random(seed)
    openings = [" ".join(rng.choices(WORDS, k=6)) for _ in range(templates)]
    for a in range(accounts):
        ip = f"{10 + (a >> 16)}.{(a >> 8) & 255}.{a & 255}.{rng.randrange(1, 255)}"
        for r in range(requests):
            yield Event.model_validate({
                "request_id": f"{a}-{r}", "ts": 1_764_500_000.0 + a * 0.05 + r * 20.0,
                "account_id": f"acct_{a:08d}", "api_key_id": f"key_{a:08d}", "client_ip": ip,
                "messages": [{"role": "user", "content": f"{rng.choice(openings)} {' '.join(rng.choices(WORDS, k=10))}"}],
                "params": {"temperature": 0.7, "max_tokens": 512},
            })


def _part(filename: str) -> str:
    return PARTS.get(Path(filename).name, OTHER)


def measure(accounts: int, requests: int, templates: int, use_tracemalloc: bool, share_mirrors: bool = True) -> Result:
    """Runs in a child process, so each measure starts from the same clean heap."""
    stream = events(accounts, requests, templates, seed=requests)
    first = next(stream)  # import-time and first-call allocations stay out of the figure
    Featurizer(MemoryStore()).step(first)
    # The text-sketch cache is the process's, up to 27 MB whatever the traffic
    # (docs/performance.md), not state kept per account: this child process runs without it.
    SKETCHES.size = 0
    SKETCHES.clear()
    gc.collect()
    rss0 = _rss()
    if use_tracemalloc:
        tracemalloc.start()
    store = MemoryStore(max_scopes=None, ttl_s=None, share_mirrors=share_mirrors)
    featurizer = Featurizer(store)
    featurizer.step(first)
    for e in stream:
        featurizer.step(e)
    gc.collect()
    by_part: dict[str, int] = defaultdict(int)
    if use_tracemalloc:
        for stat in tracemalloc.take_snapshot().statistics("filename"):
            by_part[_part(stat.traceback[0].filename)] += stat.size
        tracemalloc.stop()
    sketch_entries = sum(len(seen) for seen in store.sketch._templates.values())
    return Result(accounts, requests, store.size(), len(store.sketch), sketch_entries, dict(by_part), None if use_tracemalloc else _rss() - rss0)


def flood(n: int, max_scopes: int, max_templates: int, templates: int, checkpoints: int = 10) -> None:
    """Resident memory while n distinct accounts (each its own key and /24) arrive at a bounded
    store: flat once the LRU bounds hold (scopes, campaign templates, accounts per sketch entry)."""
    from tqdm import tqdm

    store = MemoryStore(max_scopes=max_scopes, ttl_s=None, max_templates=max_templates)
    featurizer = Featurizer(store)
    rss0 = _rss()
    every = max(n // checkpoints, 1)
    print(f"flood: {n:,} distinct accounts, keys and /24s, one request each; bounds: {max_scopes:,} scopes, {max_templates:,} campaign templates")
    for i, e in enumerate(tqdm(events(n, 1, templates, seed=0), total=n, unit=" events", mininterval=2.0), 1):
        featurizer.step(e)
        if i % every == 0:
            gc.collect()
            tqdm.write(f"  {i:>12,} accounts: RSS +{(_rss() - rss0) / 2**20:8.1f} MiB, {store.size():,} scopes, {len(store.sketch):,} templates, {len(store.cohorts):,} fingerprints, {store.evictions:,} scopes evicted")


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def sketch_speed(calls: int = 300_000) -> None:
    import time

    cases = {
        "many templates (30,000, 5,000 accounts)": lambda i, rng: (rng.randrange(30_000), f"a{rng.randrange(5_000)}"),
        "one template at its cap (2,000), every call a new account": lambda i, rng: (7, f"a{i}"),
    }
    for name, draw in cases.items():
        rng = random.Random(1)
        sketch = CampaignSketch(max_templates=20_000, max_accounts=2_000)
        args = [draw(i, rng) for i in range(calls)]
        start = time.perf_counter()
        for i, (template, account) in enumerate(args):
            sketch.observe(template, account, 1_000.0 + i * 0.001)
        print(f"campaign sketch, {name}: {(time.perf_counter() - start) / calls * 1e6:.2f} us per call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--accounts", type=int, default=2_000, help="active accounts (the figures are per account)")
    ap.add_argument("--requests", type=int, nargs="+", default=[1, 16, 64], help="requests per account, one run each (16 fills a window; from 64 on a scope also keeps its previous novelty bloom)")
    ap.add_argument("--templates", type=int, default=2_000, help="distinct prompt openings across all accounts")
    ap.add_argument("--flood", type=int, help="instead: this many distinct accounts through a bounded store, RSS at checkpoints")
    ap.add_argument("--max-scopes", type=int, default=300_000, help="--flood: the store's scope bound (MOAT_MAX_SCOPES)")
    ap.add_argument("--max-templates", type=int, default=20_000, help="--flood: the campaign sketch's template bound")
    ap.add_argument("--separate", action="store_true", help="also measure with every scope in a state of its own (MemoryStore(share_mirrors=False)), for the ratio in one run")
    ap.add_argument("--sketch-speed", action="store_true", help="instead: the time of one campaign-sketch call, typical and worst case")
    args = ap.parse_args()
    if args.sketch_speed:
        sketch_speed()
        return
    if args.flood:
        flood(args.flood, args.max_scopes, args.max_templates, templates=max(args.templates, 4 * args.max_templates))
        return
    ctx = mp.get_context("fork")
    print(f"{args.accounts:,} accounts, each with its own account, API-key and /24 address-block scope; {args.templates:,} prompt templates")
    layouts = [("mirrors kept once", True)] + ([("separate states", False)] if args.separate else [])
    for requests in args.requests:
        for layout, share in layouts:
            with ctx.Pool(1, maxtasksperchild=1) as pool:
                traced = pool.apply(measure, (args.accounts, requests, args.templates, True, share))
            with ctx.Pool(1, maxtasksperchild=1) as pool:
                rss = pool.apply(measure, (args.accounts, requests, args.templates, False, share))
            n = traced.accounts
            total = sum(traced.bytes_by_part.values())
            parts = ", ".join(f"{part} {size / n:,.0f}" for part, size in sorted(traced.bytes_by_part.items(), key=lambda kv: -kv[1]))
            print(f"\n{requests} request(s) per account, {layout}: {traced.scopes:,} scopes; campaign sketch {traced.templates:,} templates, {traced.sketch_entries:,} account entries")
            print(f"  tracemalloc: {total / n:,.0f} bytes per account with all scopes ({parts})")
            print(f"  resident:    {rss.rss_bytes / n:,.0f} bytes per account (RSS growth, allocator overhead included)")


if __name__ == "__main__":
    main()
