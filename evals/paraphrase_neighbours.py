"""Accounts whose prompts are near paraphrases of one another: probers and prompt developers.

A request is a near paraphrase when one of the account's previous `WINDOW - 1` requests (in trace
order, which is time order in a trace Moat reads) sent a different prompt within `--distance`
bits of its SimHash. Both come from the newest text as the featuriser sketches it, so the
SimHash covers that text's first 64 words: two prompts that differ only after them are at
distance 0. An account's peak share is the highest share of such requests over any `WINDOW`
consecutive requests of it; the report lists the accounts whose peak reaches `--share`, with
what tells a boundary prober from a developer iterating on a prompt's instructions: volume,
pace and logprobs.

Why it exists: on the operator sample (`calib-spread`) both kinds show the pattern within 16
requests, so a signature on it alone would throttle the developers (see docs/results.md,
limits). It prints figures about a population and reads no label, so it may run on unlabelled
operator traffic; only `--by-family` reads a trace's `family`, to count the accounts per family.

Run: python -m moat.evals.paraphrase_neighbours ../shared/data/external/calib-spread.jsonl.gz [--distance 8] [--share 0.75]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from moat.models.events import TRACE_LABEL_FIELDS, Event
from moat.models.feature_spec import WINDOW
from moat.models.summary import summarize
from moat.models.traces import iter_raw


@dataclass
class Account:
    """One account's running window and the figures the report prints."""

    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=WINDOW - 1))  # (simhash, prompt hash)
    flags: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    peak: float = 0.0  # the highest share over a full window
    requests: int = 0
    logprobs: int = 0
    ts: list[float] = field(default_factory=list)
    user_agent: str = ""
    family: str = ""

    def see(self, simhash: int, prompt: int, distance: int) -> None:
        near = any(p != prompt and (s ^ simhash).bit_count() <= distance for s, p in self.recent)
        self.recent.append((simhash, prompt))
        self.flags.append(near)
        if len(self.flags) == WINDOW:
            self.peak = max(self.peak, sum(self.flags) / WINDOW)

    def median_gap_s(self) -> float:
        ts = sorted(self.ts)  # a trace out of time order must not give negative gaps
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def scan(events: Iterable[dict[str, Any]], distance: int, by_family: bool = False, source: str = "trace") -> dict[str, Account]:
    """Every account's figures, events in trace order. The label fields are dropped unread;
    `family` is read only `by_family`, to group the report. A bad event raises ValueError
    naming `source`, the event's number and the field at fault."""
    accounts: dict[str, Account] = defaultdict(Account)
    for number, raw in enumerate(events, 1):
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: event {number}: not a JSON object")
        try:
            event = Event.model_validate({k: v for k, v in raw.items() if k not in TRACE_LABEL_FIELDS})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{source}: event {number}: {'.'.join(map(str, first['loc'])) or 'event'}: {first['msg']}") from exc
        s = summarize(event)
        a = accounts[event.account_id]
        a.see(s.simhash, s.prompt_hash, distance)
        a.requests += 1
        a.logprobs += s.logprobs
        a.ts.append(event.ts)
        a.user_agent = a.user_agent or (event.user_agent or "")
        if by_family and not a.family and isinstance(raw.get("family"), str):
            a.family = raw["family"]
    return accounts


def report(trace: Path, distance: int, share: float, by_family: bool, progress: bool = True) -> list[str]:
    events = tqdm(iter_raw(trace), desc=trace.name, unit=" events", disable=not progress, mininterval=1.0)
    accounts = scan(events, distance, by_family, str(trace))
    hits = sorted(((a.peak, name, a) for name, a in accounts.items() if a.peak >= share), key=lambda h: (-h[2].requests, h[1]))
    lines = [
        f"{trace.name}: {len(accounts):,} accounts; {len(hits)} ({len(hits) / max(len(accounts), 1):.1%}) reach a near-paraphrase share of {share:g} "
        f"over {WINDOW} requests (SimHash distance <= {distance} to a different prompt among the previous {WINDOW - 1})",
        "",
        "| account | requests | peak share | median gap (s) | logprobs share | user agent |",
        "|---|---|---|---|---|---|",
    ]
    for peak, name, a in hits:
        lines.append(f"| {name} | {a.requests} | {peak:.2f} | {a.median_gap_s():.1f} | {a.logprobs / a.requests:.0%} | {a.user_agent[:40]} |")
    if by_family:
        counted: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for a in accounts.values():
            counted[a.family or "?"][0] += a.peak >= share
            counted[a.family or "?"][1] += 1
        lines += ["", "| family | accounts reaching the share | accounts |", "|---|---|---|"]
        lines += [f"| {fam} | {hit} | {n} |" for fam, (hit, n) in sorted(counted.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moat.evals.paraphrase_neighbours", description=__doc__.split("\n")[0])
    p.add_argument("traces", nargs="+", type=Path, help="trace files (.jsonl or .jsonl.gz)")
    p.add_argument("--distance", type=int, default=8, help="SimHash bits (of 64) within which two different prompts are near paraphrases (default: 8)")
    p.add_argument("--share", type=float, default=0.75, help="list accounts whose near-paraphrase share over a full window reaches this (default: 0.75)")
    p.add_argument("--by-family", action="store_true", help="also count the accounts per family, where the trace names families")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0 <= args.distance <= 64:
        p.error(f"--distance: {args.distance} is not a number of bits between 0 and 64")
    if not 0 < args.share <= 1:
        p.error(f"--share: {args.share} is not a share in (0, 1]")
    for trace in args.traces:
        if not trace.is_file():
            p.error(f"{trace}: no such file")
    for trace in args.traces:
        try:
            lines = report(trace, args.distance, args.share, args.by_family, progress=not args.no_progress)
        except (ValueError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
            print(f"paraphrase_neighbours: error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
