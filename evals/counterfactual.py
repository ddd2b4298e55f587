"""Which free choices move a hand-written attacker's risk.

Every red-team script (`moat.evals.redteam`) is replayed alone through a bundle, once as written
and once per variant below: the same requests with one client choice changed on every request
and the rest as sent. Most of them cost an attacker nothing (decoding greedily or at a
temperature, streaming, a seed, a user agent, a system prompt): a model whose risk moves with
them can be evaded by them, and the gap between "as sent" and the lowest free variant is the
size of that evasion. The others (giving up logprobs or n > 1, capping `max_tokens`) change
what the attacker gets, so a model may read them.

No label and no background enter it: each actor meets a fresh memory state on its own, so the
figures are label-free and may guide development. They are a model's reading of the request
stream itself; the red team's figures inside real traffic (cohort, campaign and address
evidence, the population the thresholds were chosen on) are the ones to report as detection.

Run: python -m moat.evals.counterfactual --prompts ../shared/data/arena_hard_v0.1_question.jsonl
       ../shared/data/koala_test_set.jsonl [--model DIR] [--actors 2] [--seed 0] --out runs/counterfactual
It writes report.md (per script and variant, the median over its accounts of each account's
highest risk) and metrics.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from moat.evals.redteam import MIN_PROMPTS, SCRIPTS, UA_BROWSER, UA_SDK, Script, add_script_arguments, bundle_meta, read_prompts, score_pass, tally, write_actor
from moat.evals.shortcuts import Intervention, SetParam, SetUserAgent

# Each actor runs inside one day from a fixed start: the scripts only need a span to place
# their requests in, and a fixed one makes two bundles meet the same requests.
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPAN_S = 86_400.0
SYSTEM = "You are a helpful assistant."
# Parameters whose value costs an attacker nothing (the "free parameters unset" variant).
FREE_PARAMS = ("temperature", "top_p", "seed", "stop", "stream")


@dataclass(frozen=True)
class AsSent(Intervention):
    """No change: the actor as its script wrote it."""

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(event)


@dataclass(frozen=True)
class ParamsUnset(Intervention):
    """These parameters left out of every request; the others kept."""

    params: tuple[str, ...]

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "params": {k: v for k, v in (event.get("params") or {}).items() if k not in self.params}}


@dataclass(frozen=True)
class SystemPrompt(Intervention):
    """This system prompt on every request, in place of the request's own: first in a chat's
    messages, or ahead of a completion's prompt (where clients put one)."""

    text: str

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        if "messages" in event:
            return {**event, "messages": [{"role": "system", "content": self.text}, *(m for m in event["messages"] if m["role"] != "system")]}
        return {**event, "prompt": f"{self.text}\n\n{event['prompt']}"}


@dataclass(frozen=True)
class Variant:
    """A change and whether it is free: one that costs the attacker nothing of the answers' worth."""

    change: Intervention
    free: bool

    @property
    def name(self) -> str:
        return self.change.name


# The one registry of variants, "as sent" first. Each changes one choice and keeps the rest of
# the request as the script sent it. The not-free ones give up what extraction is after (soft
# labels, samples, long answers): a model may read those.
VARIANTS: tuple[Variant, ...] = (
    Variant(AsSent("as sent"), free=True),
    Variant(ParamsUnset("free parameters unset", FREE_PARAMS), free=True),
    Variant(SetParam("temperature 0", "temperature", 0.0), free=True),
    Variant(SetParam("temperature 0.7", "temperature", 0.7), free=True),
    Variant(SetParam("stream", "stream", True), free=True),
    Variant(SetParam("seed", "seed", 1234), free=True),
    Variant(SetUserAgent("browser user agent", UA_BROWSER), free=True),
    Variant(SetUserAgent("SDK user agent", UA_SDK), free=True),
    Variant(SystemPrompt("system prompt", SYSTEM), free=True),
    Variant(SetParam("max_tokens 64", "max_tokens", 64), free=False),
    Variant(ParamsUnset("logprobs unset", ("logprobs", "top_logprobs")), free=False),
    Variant(SetParam("n unset", "n", None), free=False),
)


@dataclass
class Counterfactual:
    """Each script's accounts' highest risks, per variant (accounts of every actor pooled). A
    variant that left every request of a script as it was has no entry: its cell would only
    repeat "as sent"."""

    risks: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def median(self, script: str, variant: str) -> float | None:
        risks = self.risks[script].get(variant)
        return statistics.median(risks) if risks else None

    def lowest_free(self, script: str) -> tuple[str, float]:
        """The free variant with the lowest median highest risk, and that risk."""
        medians = ((v.name, self.median(script, v.name)) for v in VARIANTS if v.free)
        return min(((n, m) for n, m in medians if m is not None), key=lambda x: x[1])


def account_max_risk(events: list[dict[str, Any]], model: Path | None) -> list[float]:
    """Each account's highest risk over its requests, scored alone from fresh memory state."""
    return [o.max_risk for o in tally(score_pass([], events, model), {}).background]


def run(prompts: list[str], model: Path | None, actors: int, seed: int, scripts: tuple[Script, ...] = SCRIPTS, progress: bool = True) -> Counterfactual:
    if len(set(prompts)) < MIN_PROMPTS:
        raise ValueError(f"--prompts: {len(set(prompts))} distinct prompts; the scripts need at least {MIN_PROMPTS}")
    if actors < 1:
        raise ValueError(f"--actors: must be at least 1, got {actors}")
    result = Counterfactual()
    jobs = [(script, i) for script in scripts for i in range(actors)]
    for script, i in tqdm(jobs, desc="counterfactual actors", unit="actor", disable=not progress):
        events = write_actor(script, i, prompts, START, START + SPAN_S, seed)
        for variant in VARIANTS:
            changed = [variant.change.apply(e) for e in events]
            if isinstance(variant.change, AsSent) or changed != events:
                result.risks[script.family][variant.name] += account_max_risk(changed, model)
    return result


def render(result: Counterfactual, model: str, throttle: float) -> str:
    names = [v.name for v in VARIANTS]
    lines = [
        f"# Free choices: hand-written attackers replayed alone ({model})",
        "",
        "Median over accounts of each account's highest risk, every request changed as the column says and otherwise "
        f"as sent. Bold: at or above the bundle's throttle threshold ({throttle:g}). —: the change leaves the script's "
        "requests as they were. Every column but those marked (not free) costs the attacker nothing; the last column is "
        "the lowest of those.",
        "",
        "| script | " + " | ".join(f"{n}{'' if v.free else ' (not free)'}" for n, v in zip(names, VARIANTS)) + " | lowest free |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for script in sorted(result.risks):
        cells = [result.median(script, n) for n in names]
        low_name, low = result.lowest_free(script)
        marked = ["—" if c is None else f"**{c:.2f}**" if c >= throttle else f"{c:.2f}" for c in cells]
        lines.append(f"| {script} | " + " | ".join(marked) + f" | {low:.2f} ({low_name}) |")
    return "\n".join(lines) + "\n"


def metrics(result: Counterfactual, model: str, throttle: float) -> dict[str, Any]:
    return {
        "model": model,
        "throttle": throttle,
        "scripts": {
            script: {
                "median_max_risk": {v.name: result.median(script, v.name) for v in VARIANTS},
                "lowest_free": dict(zip(("variant", "median_max_risk"), result.lowest_free(script))),
            }
            for script in sorted(result.risks)
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moat.evals.counterfactual", description=__doc__.split("\n\n")[0])
    add_script_arguments(ap, 2, "actors per script")
    args = ap.parse_args(argv)
    try:
        prompts = [t for p in args.prompts for t in read_prompts(p)]
        meta = bundle_meta(args.model)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out: {args.out} is a file, not a directory")
        result = run(prompts, args.model, args.actors, args.seed, progress=not args.no_progress)
        args.out.mkdir(parents=True, exist_ok=True)
        report = render(result, meta.model_version, meta.thresholds.throttle)
        (args.out / "report.md").write_text(report)
        (args.out / "metrics.json").write_text(json.dumps(metrics(result, meta.model_version, meta.thresholds.throttle), indent=2) + "\n")
    except (ValueError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
        print(f"counterfactual: error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
