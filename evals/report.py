"""report.md from the metrics of an evaluation, with each target marked met or missed."""

from __future__ import annotations

import math
from typing import Any

from moat.evals.evaluate import MOAT

HARD_NEGATIVES = ("prompt_developer", "app_backend", "batch_pipeline", "eval_runner", "agent_loop", "labeller", "corporate_nat", "logprob_researcher")


def _f(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"  # a cost multiplier with no clean answer left; queries to detection: never
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}" if isinstance(x, float) else str(x)


def targets(metrics: dict[str, Any]) -> list[tuple[str, bool, str]]:
    m = metrics["methods"][MOAT]
    others = {k: v for k, v in metrics["methods"].items() if k != MOAT}
    listed = {p: v["throttled"] for p, v in m["per_persona"].items() if p in HARD_NEGATIVES}
    # A trace from another generator names its personas otherwise (`dev-iteration`): there every
    # benign persona is held to the bar, rather than none of them.
    hard = listed or {p: v["throttled"] for p, v in m["per_persona"].items()}
    worst_hard = max(hard.items(), key=lambda kv: kv[1]) if hard else ("none", 0.0)
    beats = all(m["auroc"] > o["auroc"] and m["tpr_at_1pct_fpr"] >= o["tpr_at_1pct_fpr"] for o in others.values())
    q = m["queries_to_detection"]["median"]
    return [
        ("account AUROC >= 0.98", m["auroc"] >= 0.98, _f(m["auroc"])),
        ("TPR at 1% account FPR >= 0.90", m["tpr_at_1pct_fpr"] >= 0.90, _f(m["tpr_at_1pct_fpr"])),
        ("benign accounts ever blocked <= 0.1%", m["benign_ever_blocked"] <= 0.001, _f(m["benign_ever_blocked"], True)),
        (f"every {'hard-negative' if listed else 'benign'} persona ever non-allowed <= 2%", worst_hard[1] <= 0.02, f"worst: {worst_hard[0]} {_f(worst_hard[1], True)}"),
        ("median queries to first non-allow <= 50", not math.isnan(q) and q <= 50, _f(q)),
        ("Moat beats every baseline on AUROC and TPR@1%FPR", beats, ", ".join(f"{k} {_f(v['auroc'])}/{_f(v['tpr_at_1pct_fpr'])}" for k, v in others.items())),
    ]


def render(metrics: dict[str, Any], lofo: dict[str, Any] | None = None) -> str:
    methods = metrics["methods"]
    m = methods[MOAT]
    lines = [
        "# Moat evaluation report",
        "",
        f"Trace: `{metrics['trace']}`: {metrics['events']} events, {metrics['accounts']} accounts, {metrics['attack_accounts']} attack accounts. The account is the unit; its risk is the max over its requests.",
        "",
        "## Summary",
        "",
        "| method | AUROC | PR-AUC | TPR@1%FPR | TPR@0.1%FPR | benign ever blocked | benign ever non-allow | attack accounts acted on | median queries to detection | clean yield | est. cost multiplier (open-loop) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in methods.items():
        lines.append(
            f"| {name} | {_f(v['auroc'])} | {_f(v['pr_auc'])} | {_f(v['tpr_at_1pct_fpr'])} | {_f(v['tpr_at_0.1pct_fpr'])} | {_f(v['benign_ever_blocked'], True)} | "
            f"{_f(v['benign_ever_non_allow'], True)} | {_f(v['attack_ever_acted_on'], True)} | {_f(v['queries_to_detection']['median'])} | {_f(v['clean_yield'], True)} | {_f(v['cost_multiplier'])} |"
        )
    lines += ["", "Operating points: " + "; ".join(f"{k}: {v['operating_point']}" for k, v in methods.items()), "", "## Targets", "", "| target | met | measured |", "|---|---|---|"]
    for name, ok, value in targets(metrics):
        lines.append(f"| {name} | {'yes' if ok else '**no**'} | {value} |")
    lines += ["", "## Benign personas (Moat): share of accounts ever acted on", "", "| persona | accounts | acted on (throttle or more) | perturbed or blocked | blocked |", "|---|---|---|---|---|"]
    for p, v in m["per_persona"].items():
        lines.append(f"| {p} | {v['accounts']} | {_f(v['throttled'], True)} | {_f(v['perturbed'], True)} | {_f(v['blocked'], True)} |")
    lines += ["", "## Attack families: Moat and baselines", "", "| family | accounts | " + " | ".join(f"{k} AUROC / TPR@1% / acted on" for k in methods) + " |", "|---|---|" + "---|" * len(methods)]
    for f, v in m["per_family"].items():
        cells = [f"{_f(methods[k]['per_family'][f]['auroc'])} / {_f(methods[k]['per_family'][f]['tpr_at_1pct_fpr'])} / {_f(methods[k]['per_family'][f]['acted_on'], True)}" for k in methods]
        lines.append(f"| {f} | {v['accounts']} | " + " | ".join(cells) + " |")
    c = metrics["cost_model"]
    lines += [
        "",
        "## Attacker cost (Moat): an estimate against an open-loop attacker",
        "",
        f"Cost model: ${c['price_per_query']}/query, ${c['account_cost']}/account, throttle penalty {c['throttle_penalty']} queries, fixed limit {c['rate_limit_per_min']}/min without Moat (see evals/cost.py).",
        "The trace is replayed as recorded: the attacker does not slow down, switch accounts or back off when acted on. "
        "An adaptive attacker may pay less, so the estimated cost multiplier is no lower bound.",
        "",
        "| family | median queries to detection | clean yield | est. cost multiplier (open-loop): cost per clean answer, x without Moat |",
        "|---|---|---|---|",
    ]
    for f, v in m["per_family"].items():
        lines.append(f"| {f} | {_f(v['median_queries_to_detection'])} | {_f(v['clean_yield'], True)} | {_f(v['cost_multiplier'])} |")
    q = m["queries_to_detection"]
    lines.append(f"| **all** | {_f(q['median'])} (p90 {_f(q['p90'])}; {q['detected_accounts']}/{q['attack_accounts']} accounts detected) | {_f(m['clean_yield'], True)} | {_f(m['cost_multiplier'])} |")
    if lofo:
        lines += ["", "## Leave-one-family-out", "", "Each row: a model trained without that attack family, tested on benign accounts plus that family.", ""]
        names = sorted({k for row in lofo.values() for k in row})
        lines += ["| held-out family | " + " | ".join(f"{k} AUROC / TPR@1%" for k in names) + " |", "|---|" + "---|" * len(names)]
        for f, row in lofo.items():
            lines.append(f"| {f} | " + " | ".join(f"{_f(row[k]['auroc'])} / {_f(row[k]['tpr_at_1pct_fpr'])}" if k in row else "n/a" for k in names) + " |")
    lines += ["", "## Plots", "", "![ROC](roc.png)", "![Detection delay](detection_delay.png)", "![Risk over time](risk_over_time.png)", "![Benign actions](benign_actions.png)", ""]
    missed = [t for t in targets(metrics) if not t[1]]
    if missed:
        lines += ["## Missed targets", "", "These targets were not met on this trace: " + "; ".join(f"{n} (measured {v})" for n, _, v in missed) + ". "
                  "The limits are those of the card: simulated training data, a small per-request network, and evasive families "
                  "(slow-and-low mimicry, low-volume sybil accounts) that look like benign users at the account level.", ""]
    return "\n".join(lines)
