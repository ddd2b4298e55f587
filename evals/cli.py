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

EXPERIMENT = "moat-eval"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", required=True, type=Path, help="held-out test trace (.jsonl[.gz])")
    p.add_argument("--model", help="bundle directory or models:/moat-risk@champion (default: MOAT_MODEL, else the shipped model)")
    p.add_argument("--baselines", default="all", help=f"'all', 'none' or a comma list of: {', '.join(BASELINES)}")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--train-traces", type=Path, help="training trace for the learned baselines (default: train.jsonl beside --traces)")
    p.add_argument("--leave-one-family-out", action="store_true", help="also train a quick model without each attack family and test on it")
    p.add_argument("--data", type=Path, help="generated data directory for --leave-one-family-out (default: the folder of --traces)")
    p.add_argument("--lofo-families", default="", help="comma list of families for --leave-one-family-out (default: all attack families in the trace)")
    p.add_argument("--lofo-config", type=Path, help="TrainConfig file for the leave-one-family-out models (default: --quick settings)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///$MOAT_HOME/mlflow.db, MOAT_HOME defaulting to ~/.moat)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _baselines(spec: str) -> list[str]:
    if spec == "all":
        return list(BASELINES)
    if spec == "none":
        return []
    names = [n for n in spec.split(",") if n]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise ValueError(f"--baselines: unknown baseline {bad[0]!r}; valid: all, none, {', '.join(BASELINES)}")
    return names


def _lofo_families(spec: str) -> list[str]:
    """The attack families named by --lofo-families; [] means every family in the trace."""
    names = [n for n in spec.split(",") if n]
    if not names:
        return []
    from moat.data_gen.registry import attacks

    valid = sorted(attacks())
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"--lofo-families: unknown attack family {bad[0]!r}; valid: {', '.join(valid)}")
    return names


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for method, m in metrics["methods"].items():
        for k, v in m.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
                out[f"{method}.{k}"] = float(v)
    return out


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Every check that needs no model and no data, before any slow work: (baselines, families)."""
    baselines = _baselines(args.baselines)
    families = _lofo_families(args.lofo_families)
    if families and not args.leave_one_family_out:
        raise ValueError("--lofo-families needs --leave-one-family-out")
    if not args.traces.is_file():
        raise ValueError(f"--traces: no such trace file: {args.traces}")
    if args.leave_one_family_out:
        data_dir = args.data or args.traces.parent
        missing = [s for s in ("train", "val", "test") if split_path(data_dir, s) is None]
        if missing:
            raise ValueError(f"--leave-one-family-out: {data_dir} has no {'/'.join(missing)} split (.jsonl[.gz]); pass --data DIR written by `moat generate`")
    return baselines, families


def run(args: argparse.Namespace) -> int:
    from moat.models.bundle import BundleError, read_meta
    from moat.models.bundle_source import resolve_model
    from moat.serving.settings import ServingSettings

    logging.basicConfig(level=logging.WARNING)
    try:
        baselines, families = _check_arguments(args)
    except ValueError as exc:
        print(f"moat evaluate: error: {exc}", file=sys.stderr)
        return 2
    model_spec = args.model or ServingSettings().model
    try:
        bundle = resolve_model(model_spec)
        thresholds = read_meta(bundle).thresholds.model_dump()
    except BundleError as exc:
        # The message starts with the model spec; name where the user gave it.
        print(f"moat evaluate: error: {'--model ' if args.model else ''}{exc}", file=sys.stderr)
        return 2

    from moat.evals.cost import CostModel
    from moat.evals.evaluate import MOAT, evaluate
    from moat.evals.plots import plot_benign_actions, plot_detection_delay, plot_risk_over_time, plot_roc
    from moat.evals.report import render

    t0 = time.perf_counter()
    cost = CostModel()
    train_trace = args.train_traces or split_path(args.traces.parent, "train")
    progress = not args.no_progress
    try:
        metrics, runs, acc, _ = evaluate(args.traces, bundle, baselines, train_trace, cost, progress)
    except (BundleError, ValueError) as exc:
        print(f"moat evaluate: error: {exc}", file=sys.stderr)
        return 2
    lofo = None
    if args.leave_one_family_out:
        from moat.evals.lofo import leave_one_family_out, load_config

        data_dir = args.data or args.traces.parent
        in_trace = sorted(metrics["methods"][MOAT]["per_family"])
        fams = families or in_trace
        test_split = split_path(data_dir, "test")
        if test_split is not None and test_split.resolve() == args.traces.resolve():
            # Each held-out model is tested on this very trace: a family absent from it would
            # cost a training run and give an empty row.
            absent = [f for f in fams if f not in in_trace]
            if absent:
                print(f"moat evaluate: warning: --lofo-families: no {', '.join(absent)} accounts in {args.traces}; skipped", file=sys.stderr)
            fams = [f for f in fams if f in in_trace]
        lofo = leave_one_family_out(data_dir, fams, baselines, cost, load_config(args.lofo_config), progress)
        metrics["leave_one_family_out"] = lofo
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot_roc(runs, acc, out / "roc.png")
    plot_detection_delay(runs, acc, out / "detection_delay.png")
    plot_risk_over_time(runs[0], acc, thresholds, out / "risk_over_time.png")
    plot_benign_actions(metrics, out / "benign_actions.png")
    metrics["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render(metrics, lofo), encoding="utf-8")
    if not args.no_mlflow:
        import mlflow

        from moat.models.bundle_source import artifact_location, tracking_uri

        uri = tracking_uri(args.tracking_uri)
        mlflow.set_tracking_uri(uri)
        # Created here rather than by set_experiment, whose default artifact root for a database
        # is ./mlruns: the report's files would land in whatever directory the command ran in.
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri))
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"evaluate {args.traces.name}"):
            mlflow.log_params({"trace": str(args.traces), "model": model_spec, "baselines": ",".join(baselines)})
            mlflow.log_metrics(_flat(metrics))
            mlflow.log_artifacts(str(out))
    m = metrics["methods"][MOAT]
    print(f"Moat: account AUROC {m['auroc']:.4f}, TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}, benign ever blocked {m['benign_ever_blocked']:.2%}, "
          f"median queries to detection {m['queries_to_detection']['median']}, "
          f"estimated cost multiplier (open-loop attacker) {m['cost_multiplier']:.2f}")
    for name, v in metrics["methods"].items():
        if name != MOAT:
            print(f"  {name:<16} AUROC {v['auroc']:.4f}  TPR@1%FPR {v['tpr_at_1pct_fpr']:.3f}")
    print(f"report: {out / 'report.md'}  ({metrics['wall_s']} s)")
    return 0
