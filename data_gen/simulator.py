"""Interleaves many actors over simulated days into time-sorted train/val/test traces."""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moat.data_gen.actors import Actor, SimContext
from moat.data_gen.registry import attacks, personas, registry
from moat.models.traces import TraceWriter

# Simulated time starts on a Monday (2026-01-05 00:00 UTC) so weekday effects are meaningful.
EPOCH = 1767571200.0
SPLITS = ("train", "val", "test")


class EmptySplitError(Exception):
    """A split would be written without events: too few actors, too short a span, or every
    family of the split held out."""


@dataclass(frozen=True)
class SimConfig:
    actors: int
    days: float
    seed: int
    attack_share: float = 0.25
    holdout: tuple[str, ...] = ()
    split_shares: tuple[float, float, float] = (0.7, 0.15, 0.15)
    compress: bool = False


@dataclass
class SplitStats:
    events: int = 0
    accounts: set[str] = field(default_factory=set)
    family_events: Counter = field(default_factory=Counter)
    family_accounts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    family_actors: Counter = field(default_factory=Counter)

    def add(self, ev: dict[str, Any]) -> None:
        self.events += 1
        self.accounts.add(ev["account_id"])
        self.family_events[ev["family"]] += 1
        self.family_accounts[ev["family"]].add(ev["account_id"])

    def as_dict(self) -> dict[str, Any]:
        fams = sorted(self.family_events)
        return {
            "events": self.events,
            "accounts": len(self.accounts),
            "requests_per_account": round(self.events / max(len(self.accounts), 1), 2),
            "families": {
                f: {
                    "label": registry()[f].label,
                    "actors": self.family_actors[f],
                    "accounts": len(self.family_accounts[f]),
                    "events": self.family_events[f],
                    "share": round(self.family_events[f] / max(self.events, 1), 4),
                }
                for f in fams
            },
        }


@dataclass(frozen=True)
class ActorSpec:
    actor_id: str
    family: str
    seed: int
    split: str


def min_actors() -> int:
    """The fewest actors that give every split an actor whatever the seed (held-out families
    aside): `plan_actors` sends a family's first three actors to test, train and val, and 2F + 1
    actors over F families put three in some family."""
    return 2 * len(registry()) + 1


def plan_actors(cfg: SimConfig) -> list[ActorSpec]:
    """Choose each actor's family and split. Splits are stratified per family and by actor, and
    held-out families go to test only, so evaluation measures unseen people and attack styles."""
    rng = random.Random(cfg.seed)
    pers, atks = personas(), attacks()
    names_p, w_p = list(pers), [pers[n].weight for n in pers]
    names_a, w_a = list(atks), [atks[n].weight for n in atks]
    drawn: list[tuple[str, str, int]] = []
    for i in range(cfg.actors):
        # Every family appears at least once when there are enough actors for that.
        if i < len(names_a) and cfg.actors >= 4 * (len(names_a) + len(names_p)):
            fam = names_a[i]
        elif len(names_a) <= i < len(names_a) + len(names_p) and cfg.actors >= 4 * (len(names_a) + len(names_p)):
            fam = names_p[i - len(names_a)]
        elif rng.random() < cfg.attack_share:
            fam = rng.choices(names_a, w_a)[0]
        else:
            fam = rng.choices(names_p, w_p)[0]
        drawn.append((f"a{i:06d}", fam, rng.getrandbits(64)))
    by_family: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for d in drawn:
        by_family[d[1]].append(d)
    specs: list[ActorSpec] = []
    for fam in sorted(by_family):
        members = by_family[fam]
        rng.shuffle(members)
        for k, (aid, f, seed) in enumerate(members):
            if fam in cfg.holdout:
                split = "test"
            else:
                # Deterministic stratified assignment: the k-th actor of each family by share.
                pos = (k + 0.5) / len(members)
                split = "train" if pos < cfg.split_shares[0] else "val" if pos < cfg.split_shares[0] + cfg.split_shares[1] else "test"
                if len(members) >= 3 and k < 3:
                    split = SPLITS[(k + 2) % 3]  # small families still reach every split
            specs.append(ActorSpec(aid, f, seed, split))
    return sorted(specs, key=lambda s: s.actor_id)


def _events(specs: list[ActorSpec], ctx: SimContext) -> Iterator[dict[str, Any]]:
    reg = registry()
    actors: list[Actor] = [reg[s.family](s.actor_id, s.seed, ctx) for s in specs]
    # heapq.merge is stable for equal keys, so ties keep actor order: the output is deterministic.
    return heapq.merge(*(a.events() for a in actors), key=lambda e: e["ts"])


def simulate(cfg: SimConfig, ctx: SimContext, out: Path, progress: bool = True) -> dict[str, Any]:
    """Write train/val/test traces and return their statistics (also written to stats.json).
    Raises EmptySplitError, and removes the traces it wrote, when a split gets no events: an
    empty test file would otherwise pass for a data set."""
    specs = plan_actors(cfg)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if cfg.compress else ".jsonl"
    stats: dict[str, Any] = {"config": {"actors": cfg.actors, "days": cfg.days, "seed": cfg.seed, "attack_share": cfg.attack_share, "holdout": list(cfg.holdout)}}
    written: list[Path] = []
    with tqdm(desc="generate", unit=" events", disable=not progress, mininterval=0.5) as bar:
        try:
            for split in SPLITS:
                mine = [s for s in specs if s.split == split]
                st = SplitStats()
                for s in mine:
                    st.family_actors[s.family] += 1
                written.append(out / f"{split}{suffix}")
                with TraceWriter(written[-1]) as w:
                    for ev in _events(mine, ctx):
                        w.write(ev)
                        st.add(ev)
                        bar.update()
                if not st.events:
                    raise EmptySplitError(f"the {split} split got no events ({len(mine)} of {cfg.actors} actors, {cfg.days:g} days); use more actors or days, or hold out fewer families")
                stats[split] = st.as_dict()
        except EmptySplitError:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return stats
