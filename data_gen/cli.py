"""`moat generate`: simulate labelled traffic and write train/val/test traces."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moat.data_gen.actors import SimContext
from moat.data_gen.corpus import load_corpus
from moat.data_gen.registry import registry
from moat.data_gen.simulator import EPOCH, EmptySplitError, SimConfig, min_actors, simulate
from moat.data_gen.text import PromptGrammar
from moat.data_gen.timing import DAY, TimingLibrary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--actors", type=int, default=1000, help=f"number of actors (people, services, attackers); at least {min_actors()}, so that train, val and test each get some")
    p.add_argument("--days", type=float, default=3.0, help="simulated days")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed and options write byte-identical files")
    p.add_argument("--corpus", action="append", default=[], help="file of real prompts to mix in (repeatable)")
    p.add_argument("--timing-from", action="append", default=[], help="ServeGen folder/CSV or Azure CSV to fit service rates from")
    p.add_argument("--holdout-families", default="", help="comma-separated attack families kept out of train and val")
    p.add_argument("--attack-share", type=float, default=0.25, help="share of actors that are attackers")
    p.add_argument("--gzip", action="store_true", help="write .jsonl.gz")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def _fail(msg: str) -> int:
    print(f"moat generate: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    families = registry()
    holdout = tuple(f for f in args.holdout_families.split(",") if f)
    unknown = [f for f in holdout if f not in families]
    if unknown:
        return _fail(f"unknown family {unknown[0]!r}; valid: {', '.join(sorted(families))}")
    if args.actors < min_actors():
        return _fail(f"--actors must be at least {min_actors()} (two per family plus one), so that train, val and test each get actors; got {args.actors}")
    if args.days <= 0:
        return _fail("--days must be positive")
    if not 0 <= args.attack_share <= 1:
        return _fail("--attack-share must be within [0, 1]")
    try:
        corpus = [t for path in args.corpus for t in load_corpus(path)]
        timing = TimingLibrary.from_paths(args.timing_from) if args.timing_from else None
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    cfg = SimConfig(actors=args.actors, days=args.days, seed=args.seed, attack_share=args.attack_share, holdout=holdout, compress=args.gzip)
    ctx = SimContext(start=EPOCH, end=EPOCH + args.days * DAY, grammar=PromptGrammar(corpus), timing=timing)
    try:
        stats = simulate(cfg, ctx, args.out, progress=not args.no_progress)
    except EmptySplitError as exc:
        return _fail(str(exc))
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print_table(stats)
    return 0


def print_table(stats: dict) -> None:
    for split in ("train", "val", "test"):
        s = stats[split]
        print(f"\n{split}: {s['accounts']} accounts, {s['events']} events, {s['requests_per_account']} requests/account")
        print(f"  {'family':<22}{'label':>6}{'actors':>8}{'accounts':>10}{'events':>10}{'share':>8}")
        for fam, f in s["families"].items():
            print(f"  {fam:<22}{f['label']:>6}{f['actors']:>8}{f['accounts']:>10}{f['events']:>10}{f['share']:>8.1%}")
