"""Does one request field carry the decision? A counterfactual check of a bundle for shortcuts.

The simulator chooses every client's parameter values and user agents, so a model can learn to
read a value (temperature 0.2, a browser user agent) as evidence when nothing about extraction
sets it. For a sample of labelled accounts this replays each account's requests alone, as
recorded and again with one field changed on every request (an `Intervention`), and reports
how far the account's risk moves and how many accounts cross the throttle threshold. A field
whose value alone clears attackers is an evasion that costs them nothing; one whose value alone
flags benign accounts is a false positive waiting for a client that sends it.

An account replayed alone has fresh state, so what other accounts add (campaign and cohort
counts, shared address blocks) is left out: the check measures the account's own traffic, the
risk that decides whether it is acted on at all (`Scorer.own_risk_stream`).

Run: python -m moat.evals.shortcuts --trace ../shared/data/external/dev-spread.jsonl.gz [--model DIR]
`--evade "temperature 0" --out T` writes the trace as an attacker who uses the shortcut would
send it (every attack request changed), for `moat evaluate` to score with every cross-account
feature in place (docs/results.md, "Free evasions").
"""

from __future__ import annotations

import argparse
import random
import sys
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from moat.models.bundle import DEFAULT_BUNDLE
from moat.models.events import Event
from moat.models.memory_store import MemoryStore
from moat.models.traces import TraceWriter, iter_raw
from moat.serving.settings import ServingSettings

if TYPE_CHECKING:
    from moat.serving.scorer import Scorer

UA_SCRIPT = "python-requests/2.32.3"
UA_BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


@dataclass(frozen=True)
class Intervention(ABC):
    """One counterfactual: a change applied to every request of an account."""

    name: str

    @abstractmethod
    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with the change made (a new dict: the recorded one is left alone)."""


@dataclass(frozen=True)
class SetParam(Intervention):
    """A sampling parameter set to one value on every request (None: not sent)."""

    param: str
    value: Any

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in (event.get("params") or {}).items() if k != self.param}
        if self.value is not None:
            params[self.param] = self.value
        return {**event, "params": params}


@dataclass(frozen=True)
class SetUserAgent(Intervention):
    """One user agent on every request (None: no header)."""

    user_agent: str | None

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "user_agent": self.user_agent}


# Values every side plausibly sends; none of them is extraction by itself.
INTERVENTIONS: tuple[Intervention, ...] = (
    SetParam("temperature unset", "temperature", None),
    SetParam("temperature 0", "temperature", 0.0),
    SetParam("temperature 0.2", "temperature", 0.2),
    SetParam("temperature 0.7", "temperature", 0.7),
    SetParam("temperature 1.0", "temperature", 1.0),
    SetParam("max_tokens unset", "max_tokens", None),
    SetParam("max_tokens 256", "max_tokens", 256),
    SetParam("max_tokens 4096", "max_tokens", 4096),
    SetParam("stream unset", "stream", None),
    SetUserAgent("user agent: script", UA_SCRIPT),
    SetUserAgent("user agent: browser", UA_BROWSER),
)


@dataclass
class Shift:
    """What one intervention did to the sampled accounts of one class. Each direction is
    counted apart: for attack accounts `down` is a field that clears them, for benign accounts
    `up` is a field that flags them."""

    moved: list[float] = field(default_factory=list)  # risk after minus risk as recorded, per account
    up: int = 0  # accounts below the throttle threshold as recorded, at or above it after
    down: int = 0  # accounts at or above it as recorded, below it after

    @property
    def accounts(self) -> int:
        return len(self.moved)


def sample_accounts(trace: Path, per_class: int, max_events: int, seed: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Up to `per_class` attack and benign accounts, each with its first `max_events` requests,
    and each account's label. The trace must be labelled: an unlabelled event would otherwise
    pass for benign and the report would have no attack side."""
    labels: dict[str, int] = {}
    for e in iter_raw(trace):
        label = e.get("label")
        if label not in (0, 1):
            raise ValueError(f"{trace}: event {e.get('request_id')!r} has label {label!r}; the shortcut check needs a trace labelled 0 (benign) or 1 (attack)")
        labels.setdefault(e["account_id"], label)
    rng = random.Random(seed)
    chosen: set[str] = set()
    for label in (0, 1):
        ids = sorted(a for a, y in labels.items() if y == label)
        chosen.update(rng.sample(ids, min(per_class, len(ids))))
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in iter_raw(trace):
        a = e["account_id"]
        if a in chosen and len(events[a]) < max_events:
            events[a].append(e)
    return dict(events), {a: labels[a] for a in events}


def scorer(model: Path) -> "Scorer":
    """A scorer on `model` with fresh memory state, under the environment's serving settings."""
    from moat.serving.scorer import Scorer  # onnxruntime only when a check runs

    return Scorer(ServingSettings(), store=MemoryStore(), bundle=model)


def account_risk(model: Path, events: list[dict[str, Any]]) -> float:
    """The account's own risk (max over its requests), replayed alone from fresh state."""
    return max(r for _, r in scorer(model).own_risk_stream([Event.model_validate(e) for e in events]))


def run(
    trace: Path, model: Path, per_class: int = 60, max_events: int = 200, seed: int = 0, progress: bool = True, risk: Callable[[Path, list[dict[str, Any]]], float] = account_risk
) -> tuple[dict[str, dict[int, Shift]], float]:
    """Each intervention's shift per class (0 benign, 1 attack), and the throttle threshold
    (the one serving applies: the bundle's, or the environment's override)."""
    throttle = scorer(model).policy.t.throttle
    accounts, label = sample_accounts(trace, per_class, max_events, seed)
    bar = tqdm(total=len(accounts) * (1 + len(INTERVENTIONS)), desc="counterfactual replays", unit="replay", disable=not progress, file=sys.stderr)
    base: dict[str, float] = {}
    for a, evs in accounts.items():
        base[a] = risk(model, evs)
        bar.update()
    out: dict[str, dict[int, Shift]] = {}
    for iv in INTERVENTIONS:
        shifts = {0: Shift(), 1: Shift()}
        for a, evs in accounts.items():
            after = risk(model, [iv.apply(e) for e in evs])
            s = shifts[label[a]]
            s.moved.append(after - base[a])
            s.up += base[a] < throttle <= after
            s.down += after < throttle <= base[a]
            bar.update()
        out[iv.name] = shifts
    bar.close()
    return out, throttle


def render(shifts: dict[str, dict[int, Shift]], throttle: float) -> str:
    lines = [
        f"Accounts replayed alone, each field set to one value on every request. Cleared: attack accounts that fall below the throttle threshold ({throttle:.4f}); "
        "caught: attack accounts that rise to it; flagged: benign accounts that rise to it.",
        "",
        "| intervention | attack: median / 10th pct risk change | attack accounts cleared / caught | benign: median / 90th pct risk change | benign accounts flagged |",
        "|---|---|---|---|---|",
    ]
    for name, by in shifts.items():
        att, ben = by[1], by[0]
        a = np.array(att.moved) if att.moved else np.zeros(1)
        b = np.array(ben.moved) if ben.moved else np.zeros(1)
        lines.append(
            f"| {name} | {np.median(a):+.3f} / {np.percentile(a, 10):+.3f} | {att.down} / {att.up} of {att.accounts} | {np.median(b):+.3f} / {np.percentile(b, 90):+.3f} | {ben.up} of {ben.accounts} |"
        )
    return "\n".join(lines)


def write_evasion(trace: Path, name: str, out: Path) -> int:
    """Write `trace` with intervention `name` applied to every attack request: the trace an
    attacker who knows the shortcut would send (labels choose which requests, as evaluation
    reads them; benign traffic is left as recorded). Returns the requests changed."""
    by_name = {iv.name: iv for iv in INTERVENTIONS}
    if name not in by_name:
        raise ValueError(f"--evade: unknown intervention {name!r}; choose from {', '.join(by_name)}")
    changed = 0
    writer = TraceWriter(out)
    try:
        for e in iter_raw(trace):
            if e.get("label") == 1:
                e = by_name[name].apply(e)
                changed += 1
            writer.write(e)
    finally:
        writer.close()
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moat.evals.shortcuts", description=__doc__.split("\n")[0])
    p.add_argument("--trace", type=Path, required=True, help="labelled trace (.jsonl or .jsonl.gz)")
    p.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped model)")
    p.add_argument("--accounts", type=int, default=60, help="accounts sampled per class (default 60)")
    p.add_argument("--max-events", type=int, default=200, help="requests replayed per account (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evade", metavar="INTERVENTION", help="instead of the check, write the trace with this intervention on every attack request to --out (for `moat evaluate`)")
    p.add_argument("--out", type=Path, help="the trace --evade writes (.jsonl or .jsonl.gz)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.evade is not None:
        if args.out is None:
            p.error("--evade needs --out")
        try:
            n = write_evasion(args.trace, args.evade, args.out)
        except ValueError as exc:
            p.error(str(exc))
        print(f"{n} attack requests with {args.evade!r} -> {args.out}")
        return 0
    shifts, throttle = run(args.trace, args.model or DEFAULT_BUNDLE, args.accounts, args.max_events, args.seed, not args.no_progress)
    print(render(shifts, throttle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
