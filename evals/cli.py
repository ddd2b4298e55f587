"""`moat evaluate`: metrics, baselines, plots, report.md and an MLflow run for a held-out trace."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from moat.evals.baselines import BASELINES
from moat.models.traces import split_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", required=True, type=Path, help="held-out test trace (.jsonl[.gz])")
    p.add_argument("--model", type=Path, help="bundle directory (default: the shipped model)")
    p.add_argument("--baselines", default="all", help=f"'all', 'none' or a comma list of: {', '.join(BASELINES)}")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--train-traces", type=Path, help="training trace for the learned baselines (default: train.jsonl beside --traces)")
    p.add_argument("--leave-one-family-out", action="store_true", help="also train a quick model without each attack family and test on it")
    p.add_argument("--data", type=Path, help="generated data directory for --leave-one-family-out (default: the folder of --traces)")
    p.add_argument("--lofo-families", default="", help="comma list of families for --leave-one-family-out (default: all attack families in the trace)")
    p.add_argument("--lofo-config", type=Path, help="TrainConfig file for the leave-one-family-out models (default: --quick settings)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation to MLflow")
    p.add_argument("--no-progress", action="store_true")


def _baselines(spec: str) -> list[str]:
    if spec == "all":
        return list(BASELINES)
    if spec == "none":
        return []
    names = [n for n in spec.split(",") if n]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline {bad[0]!r}; valid: all, none, {', '.join(BASELINES)}")
    return names


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for method, m in metrics["methods"].items():
        for k, v in m.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
                out[f"{method}.{k}"] = float(v)
    return out


def run(args: argparse.Namespace) -> int:
    from moat.evals.cost import CostModel
    from moat.evals.evaluate import MOAT, evaluate
    from moat.evals.plots import plot_benign_actions, plot_detection_delay, plot_risk_over_time, plot_roc
    from moat.evals.report import render

    logging.basicConfig(level=logging.WARNING)
    try:
        baselines = _baselines(args.baselines)
    except ValueError as exc:
        print(f"moat evaluate: error: {exc}", file=sys.stderr)
        return 2
    if not args.traces.is_file():
        print(f"moat evaluate: error: no such trace file: {args.traces}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cost = CostModel()
    train_trace = args.train_traces or split_path(args.traces.parent, "train")
    progress = not args.no_progress
    from moat.models.bundle import BundleError

    try:
        metrics, runs, acc, _ = evaluate(args.traces, args.model, baselines, train_trace, cost, progress)
    except (BundleError, ValueError) as exc:
        print(f"moat evaluate: error: {exc}", file=sys.stderr)
        return 2
    lofo = None
    if args.leave_one_family_out:
        from moat.evals.lofo import leave_one_family_out, load_config

        data_dir = args.data or args.traces.parent
        fams = [f for f in args.lofo_families.split(",") if f] or sorted(metrics["methods"][MOAT]["per_family"])
        lofo = leave_one_family_out(data_dir, fams, baselines, cost, load_config(args.lofo_config), progress)
        metrics["leave_one_family_out"] = lofo
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    moat_run = runs[0]
    from moat.models.bundle import DEFAULT_BUNDLE, read_meta

    thr = read_meta(args.model or DEFAULT_BUNDLE).thresholds.model_dump()
    plot_roc(runs, acc, out / "roc.png")
    plot_detection_delay(runs, acc, out / "detection_delay.png")
    plot_risk_over_time(moat_run, acc, thr, out / "risk_over_time.png")
    plot_benign_actions(metrics, out / "benign_actions.png")
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render(metrics, lofo), encoding="utf-8")
    if not args.no_mlflow:
        import mlflow

        from moat.models.bundle_source import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(args.tracking_uri))
        mlflow.set_experiment("moat-eval")
        with mlflow.start_run(run_name=f"evaluate {args.traces.name}"):
            mlflow.log_params({"trace": str(args.traces), "model": str(args.model or DEFAULT_BUNDLE), "baselines": ",".join(baselines)})
            mlflow.log_metrics(_flat(metrics))
            mlflow.log_artifacts(str(out))
    m = metrics["methods"][MOAT]
    print(f"Moat: account AUROC {m['auroc']:.4f}, TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}, benign ever blocked {m['benign_ever_blocked']:.2%}, "
          f"median queries to detection {m['queries_to_detection']['median']}, cost multiplier {m['cost_multiplier']:.2f}")
    for name, v in metrics["methods"].items():
        if name != MOAT:
            print(f"  {name:<16} AUROC {v['auroc']:.4f}  TPR@1%FPR {v['tpr_at_1pct_fpr']:.3f}")
    print(f"report: {out / 'report.md'}  ({metrics['wall_s']} s)")
    return 0
