"""How many accounts share one client habit within an hour: the simulator against real traffic.

A habit here is coarse on purpose: the endpoint, the names of the parameters sent, the
temperature value, whether a system message is present and whether the answer streams (no user
agent, model or other parameter value). A sybil campaign's accounts share one; the question is
how many benign accounts do too. Counted as the campaign sketch counts a template: distinct
accounts, this one included, that sent the habit in the last hour (six 10-minute buckets), and
per account the median over its requests.

No label is read: the figures describe a population, so the unlabelled operator sample
(`calib-spread`) can be compared with the simulator's traces. Where a trace carries `family`,
`--by-family` also prints each family's median (the simulator's own traces).

Run: python -m moat.evals.habit_crowding data/eval/test.jsonl ../shared/data/external/calib-spread.jsonl.gz [--over 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from moat.models.state import CAMPAIGN_BUCKET_S, CAMPAIGN_BUCKETS
from moat.models.traces import iter_raw

Habit = tuple[Any, ...]


def habit(event: dict[str, Any]) -> Habit:
    params = event.get("params") or {}
    messages = event.get("messages") or []
    system = any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages)
    return (event.get("endpoint"), tuple(sorted(params)), params.get("temperature"), system, bool(params.get("stream")))


def crowding(events: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per account, the median over its requests of the accounts that sent the request's habit in
    the last hour, itself included. Events in trace order."""
    last_bucket: dict[Habit, dict[str, int]] = defaultdict(dict)
    counts: dict[str, list[int]] = defaultdict(list)
    for e in events:
        bucket = int(float(e["ts"]) // CAMPAIGN_BUCKET_S)
        seen = last_bucket[habit(e)]
        seen[e["account_id"]] = bucket
        counts[e["account_id"]].append(sum(1 for b in seen.values() if b > bucket - CAMPAIGN_BUCKETS))
    return {account: float(statistics.median(c)) for account, c in counts.items()}


def report(trace: Path, over: float, by_family: bool) -> list[str]:
    families: dict[str, str] = {}

    def events() -> Iterable[dict[str, Any]]:
        for e in iter_raw(trace):
            if "family" in e:
                families[e["account_id"]] = e["family"]
            yield e

    per_account = crowding(events())
    values = np.array(list(per_account.values()))
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    lines = [f"{trace.name}: {len(values):,} accounts; accounts sharing their habit within an hour, median per account: p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}; share above {over:g}: {np.mean(values > over):.1%}"]
    if by_family and families:
        grouped: dict[str, list[float]] = defaultdict(list)
        for account, v in per_account.items():
            grouped[families.get(account, "?")].append(v)
        for fam, vs in sorted(grouped.items(), key=lambda kv: -statistics.median(kv[1])):
            lines.append(f"  {fam:22s} {len(vs):5,} accounts, median {statistics.median(vs):5.1f}, share above {over:g}: {np.mean(np.array(vs) > over):.1%}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moat.evals.habit_crowding", description=__doc__.split("\n")[0])
    p.add_argument("traces", nargs="+", type=Path, help="trace files (.jsonl or .jsonl.gz)")
    p.add_argument("--over", type=float, default=7.0, help="report the share of accounts whose median is above this")
    p.add_argument("--by-family", action="store_true", help="also each family's median, where the trace names families")
    args = p.parse_args(argv)
    for trace in args.traces:
        if not trace.is_file():
            p.error(f"{trace}: no such file")
    for trace in args.traces:
        print("\n".join(report(trace, args.over, args.by_family)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
