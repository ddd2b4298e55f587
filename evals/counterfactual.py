"""Which free choices move a hand-written attacker's risk.

Every red-team script (`moat.evals.redteam`) is replayed alone through a bundle, once as written
and once per variant below: the same requests with one client choice changed on every request.
Most of them cost an attacker nothing (decoding greedily or at a temperature, streaming, a seed,
a user agent, a system prompt): a model whose risk moves with them can be evaded by them, and
the gap between "as sent" and the lowest free variant is the size of that evasion. The others
(the top logprobs, n > 1, a capped `max_tokens`) change what the attacker gets, so a model may
read them.

No label and no background enter it: each actor meets a fresh memory state on its own, so the
figures are label-free and may guide development. They are a model's reading of the request
stream itself; the red team's figures inside real traffic (cohort, campaign and address
evidence, the population the thresholds were chosen on) are the ones to report as detection.

Run: python -m moat.evals.counterfactual --prompts ../shared/data/arena_hard_v0.1_question.jsonl
       ../shared/data/koala_test_set.jsonl [--model DIR] [--actors 2] [--seed 0] --out runs/counterfactual
It writes report.md (median over actors of each account's highest risk, per script and variant)
and metrics.json.
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

from moat.evals.redteam import MIN_PROMPTS, SCRIPTS, UA_BROWSER, UA_SDK, Script, read_prompts, score_pass, write_actor

# Each actor runs inside one day from a fixed start: the scripts only need a span to place
# their requests in, and a fixed one makes two bundles meet the same requests.
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPAN_S = 86_400.0
SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Variant:
    """One client choice changed on every request. `params` replaces the request's parameters
    (None keeps them); `user_agent` replaces its user agent; `system` puts a system message
    first in every chat request. `free`: the change costs an attacker nothing."""

    name: str
    free: bool
    params: dict[str, Any] | None = None
    user_agent: str | None = None
    system: str | None = None

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        out = dict(event)
        if self.params is not None:
            out["params"] = dict(self.params)
        if self.user_agent is not None:
            out["user_agent"] = self.user_agent
        if self.system is not None and "messages" in out:
            out["messages"] = [{"role": "system", "content": self.system}, *(m for m in out["messages"] if m["role"] != "system")]
        return out


# The one registry of variants, "as sent" first.
VARIANTS: tuple[Variant, ...] = (
    Variant("as sent", free=True),
    Variant("no parameters", free=True, params={}),
    Variant("temperature 0", free=True, params={"temperature": 0}),
    Variant("temperature 0.7", free=True, params={"temperature": 0.7}),
    Variant("stream", free=True, params={"stream": True}),
    Variant("seed", free=True, params={"seed": 1234}),
    Variant("browser user agent", free=True, user_agent=UA_BROWSER),
    Variant("SDK user agent", free=True, user_agent=UA_SDK),
    Variant("system prompt", free=True, system=SYSTEM),
    Variant("max_tokens 64", free=False, params={"max_tokens": 64}),
    Variant("top 20 logprobs", free=False, params={"logprobs": True, "top_logprobs": 20}),
    Variant("n 8", free=False, params={"n": 8}),
)


@dataclass
class Counterfactual:
    """Each script's accounts' highest risks, per variant (accounts of every actor pooled)."""

    risks: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def median(self, script: str, variant: str) -> float:
        return statistics.median(self.risks[script][variant])

    def lowest_free(self, script: str) -> tuple[str, float]:
        """The free variant with the lowest median highest risk, and that risk."""
        return min(((v.name, self.median(script, v.name)) for v in VARIANTS if v.free), key=lambda x: x[1])


def account_max_risk(events: list[dict[str, Any]], model: Path | None) -> list[float]:
    """Each account's highest risk over its requests, scored alone from fresh memory state."""
    best: dict[str, float] = {}
    for account, _, risk in score_pass([], events, model):
        best[account] = max(best.get(account, 0.0), risk)
    return list(best.values())


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
            result.risks[script.family][variant.name] += account_max_risk([variant.apply(e) for e in events], model)
    return result


def render(result: Counterfactual, model: str, throttle: float) -> str:
    names = [v.name for v in VARIANTS]
    lines = [
        f"# Free choices: hand-written attackers replayed alone ({model})",
        "",
        "Median over accounts of each account's highest risk, every request changed as the column says (a parameter "
        f"column sends that parameter alone). Bold: at or above the bundle's throttle threshold ({throttle:g}). Free: a change that costs the attacker "
        "nothing; the last column is the lowest free variant.",
        "",
        "| script | " + " | ".join(f"{n}{'' if v.free else ' (not free)'}" for n, v in zip(names, VARIANTS)) + " | lowest free |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for script in sorted(result.risks):
        cells = [result.median(script, n) for n in names]
        low_name, low = result.lowest_free(script)
        marked = [f"**{c:.2f}**" if c >= throttle else f"{c:.2f}" for c in cells]
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
    ap.add_argument("--prompts", type=Path, nargs="+", required=True, help="real prompt files (JSONL(.gz) or CSV, as --corpus reads)")
    ap.add_argument("--model", type=Path, default=None, help="bundle directory (default: MOAT_MODEL, else the shipped model)")
    ap.add_argument("--actors", type=int, default=2, help="actors per script (default: 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        prompts = [t for p in args.prompts for t in read_prompts(p)]
        result = run(prompts, args.model, args.actors, args.seed, progress=not args.no_progress)
        model, throttle = _bundle(args.model)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
        print(f"counterfactual: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(result, model, throttle)
    (args.out / "report.md").write_text(report)
    (args.out / "metrics.json").write_text(json.dumps(metrics(result, model, throttle), indent=2) + "\n")
    print(report)
    return 0


def _bundle(model: Path | None) -> tuple[str, float]:
    from moat.models.bundle import load_bundle
    from moat.models.bundle_source import resolve_model
    from moat.serving.settings import ServingSettings

    meta = load_bundle(model or resolve_model(ServingSettings().model))[0]
    return meta.model_version, meta.thresholds.throttle


if __name__ == "__main__":
    sys.exit(main())
