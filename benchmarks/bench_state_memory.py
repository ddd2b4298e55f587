"""Memory of MemoryStore: bytes per scope by fill, and 1,000,000 distinct accounts.
Account activity follows a heavy tail (most accounts send a few requests, some fill the
window), as API traffic does. Usage: python benchmarks/bench_state_memory.py [--accounts N]"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np

from moat.models.events import Event
from moat.models.feature_spec import WINDOW
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import ScopeState, window
from moat.models.summary import summarize


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    args = ap.parse_args()
    summaries = [summarize(Event.model_validate({"request_id": str(i), "ts": float(i), "account_id": "a", "prompt": f"prompt number {i} about things"})) for i in range(WINDOW)]
    for fill in (1, 4, WINDOW):
        st = ScopeState()
        for s in summaries[:fill]:
            window(st, s, 1, "account")
        print(f"scope with {fill:>2} requests: {st.nbytes():,} bytes of arrays")
    rng = np.random.default_rng(0)
    fills = np.minimum(rng.geometric(0.3, size=args.accounts), WINDOW)  # mean about 3.3 requests
    gc.collect()
    base = rss_mb()
    store = MemoryStore(max_scopes=None, ttl_s=None)
    t0 = time.perf_counter()
    for a, fill in enumerate(fills):
        key = f"acct_{a:08d}"
        for s in summaries[:fill]:
            store.update("account", key, s.ts, lambda st, s=s: window(st, s, 1, "account"))
    used = rss_mb() - base
    print(f"{args.accounts:,} accounts ({fills.sum():,} requests, mean {fills.mean():.1f}/account, {int((fills == WINDOW).sum()):,} with full windows): "
          f"{used:,.0f} MB resident ({used * 1024 * 1024 / args.accounts:,.0f} bytes/account) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
