"""Simulator throughput (events written per second on one core) and peak memory for a
1,000,000-event trace. Usage: python benchmarks/bench_generate.py [--events 1000000]"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    # About 440 events per actor-day at the default mix (measured); size the run to the target.
    days = 2.0
    actors = max(50, int(args.events / (440 * days)))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", "import sys; from moat.cli import main; sys.exit(main())", "generate", "--out", tmp, "--actors", str(actors), "--days", str(days), "--seed", "1", "--no-progress"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
        dt = time.perf_counter() - t0
        n = sum(sum(1 for _ in open(Path(tmp) / f"{s}.jsonl", encoding="utf-8")) for s in ("train", "val", "test"))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"generate: {n} events from {actors} actors over {days} days in {dt:.1f} s = {n / dt:,.0f} events/s (one process); peak RSS {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
