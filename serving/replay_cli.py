"""`moat replay TRACE -o SCORES [--model PATH]`: score a trace offline with the serving Scorer,
from empty state, one score per input event in input order, in the trace's own time (each
event's `ts` as recorded, whatever MOAT_TIME_SOURCE says: see docs/operations.md, "Time")."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from tqdm import tqdm

from moat.models.events import Event
from moat.models.traces import TraceWriter, iter_lines
from moat.serving.settings import ServingSettings

if TYPE_CHECKING:
    from moat.serving.scorer import Score, Scorer

log = logging.getLogger("moat.replay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", type=Path, help="trace file (.jsonl or .jsonl.gz)")
    p.add_argument("-o", "--output", required=True, type=Path, help="scores file to write (.jsonl)")
    p.add_argument("--model", help="bundle directory or models:/moat-risk@champion (default: MOAT_MODEL, else the shipped model)")
    p.add_argument("--shadow", action="store_true", help="shadow mode: report, always allow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--workers", type=_positive, default=1, metavar="N", help="featurise on N processes; the scores are the same as with 1 (default: 1)")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return n


def invalid_score(raw: object, lineno: int, model_version: str) -> dict:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    rid = raw.get("request_id") if isinstance(raw, dict) else None
    return {"request_id": rid if isinstance(rid, str) and rid else f"line-{lineno}", "risk": 0.0, "action": "allow", "reasons": ["invalid_event"], "model_version": model_version}


def _validate(raw: str | dict) -> Event:
    # Trace lines are validated straight from JSON text (pydantic's own parser is faster than
    # json.loads followed by validation); dicts come from callers that already parsed them.
    return Event.model_validate_json(raw) if isinstance(raw, str) else Event.model_validate(raw)


def replay(scorer: "Scorer", raws: Iterable[str | dict], emit: Callable[[dict], None], progress: bool = False, workers: int = 1) -> tuple[int, int]:
    """Score events (JSON lines or dicts) in order through `scorer`, each at its recorded `ts`; an
    invalid event gets an `invalid_event` score in its place, so output lines up with input.
    With `workers` > 1, featurisation runs on that many processes (moat.serving.replay_workers),
    with the same output. Returns (events, invalid)."""
    pending: deque[str | dict | None] = deque()  # invalid inputs awaiting their placeholder score
    bad = 0

    def invalid(lineno: int, raw: str | dict, loc: str, msg: str) -> None:
        nonlocal bad
        bad += 1
        log.warning("line %d: invalid event (%s: %s)", lineno, loc, msg)
        pending.append(raw)

    def validated(lines: Iterable[str | dict]) -> Iterator[Event | None]:
        for lineno, raw in enumerate(lines, 1):
            try:
                event = _validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                invalid(lineno, raw, ".".join(map(str, first["loc"])) or "body", first["msg"])
                yield None
            else:
                yield event

    lines = tqdm(raws, desc="replay", unit=" events", disable=not progress, mininterval=1.0)
    if workers > 1:
        from moat.serving.replay_workers import replay_parallel

        scores: Iterable[Score | None] = replay_parallel(scorer, lines, workers, lambda lineno, raw, err: invalid(lineno, raw, err.loc, err.msg))
    else:
        scores = scorer.score_stream(validated(lines))  # a stream scores at the trace's own times
    n = 0
    for score in scores:
        n += 1
        emit(score.model_dump(exclude_none=True) if score is not None else invalid_score(pending.popleft(), n, scorer.model_version))
    return n, bad


def run(args: argparse.Namespace) -> int:
    from moat.models.bundle import BundleError
    from moat.serving.replay_workers import ReplayWorkerError
    from moat.serving.scorer import ModelFault, Scorer

    logging.basicConfig(level=logging.WARNING)
    overrides = {"state": "memory", **({"model": args.model} if args.model else {}), **({"mode": "shadow"} if args.shadow else {})}
    try:
        scorer = Scorer(ServingSettings(**overrides))
    except BundleError as exc:
        # The message starts with the model spec; name where the user gave it.
        print(f"moat replay: error: {'--model ' if args.model else ''}{exc}", file=sys.stderr)
        return 2
    if not args.trace.is_file():
        print(f"moat replay: error: no such trace file: {args.trace}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with TraceWriter(args.output) as out:
            n, bad = replay(scorer, iter_lines(args.trace), out.write, progress=not args.no_progress, workers=args.workers)
    except (ModelFault, ReplayWorkerError) as exc:
        print(f"moat replay: error: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"scored {n} events ({bad} invalid) in {dt:.1f} s: {n / max(dt, 1e-9):.0f} events/s -> {args.output}", file=sys.stderr)
    return 0


