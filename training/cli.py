"""`moat train`: train on DIR/train and DIR/val, write a bundle, log and register in MLflow."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="directory written by `moat generate`")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--quick", action="store_true", help="a short run for tests and demos (one to three minutes on two cores, by trace size)")
    p.add_argument("--config", type=Path, help="JSON or TOML file overriding TrainConfig fields")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///$MOAT_HOME/mlflow.db, MOAT_HOME defaulting to ~/.moat)")
    p.add_argument("--devices", help="Lightning devices, e.g. 1, 2 or auto (DDP: --devices 2 --strategy ddp)")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from moat.training.arguments import ArgumentError, check_config_file, check_data_dir, check_out_dir

    try:
        check_data_dir(args.data, ("train", "val"))
        check_config_file(args.config)
        check_out_dir(args.out)
    except ArgumentError as exc:
        print(f"moat train: error: {exc}", file=sys.stderr)
        return 2
    # Only now the heavy imports: the configuration's NetConfig brings torch, the trainer Lightning.
    from moat.training.config import ConfigError, TrainConfig

    try:
        cfg = TrainConfig.load(args.config, quick=args.quick)
    except ConfigError as exc:
        print(f"moat train: error: bad configuration: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in {"devices": args.devices, "strategy": args.strategy}.items() if v}
    if overrides:
        cfg = cfg.model_copy(update={k: int(v) if v.isdigit() else v for k, v in overrides.items()})

    from moat.training.trainer import train

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    result = train(args.data, args.out, cfg, args.tracking_uri, progress=not args.no_progress)
    m = result.metrics
    print(f"bundle: {result.bundle}  (MLflow run {result.run_id})")
    # "As served": every request's window, calibrated, scopes combined; the progress bar's
    # val_window_auroc is a cheaper per-epoch proxy (training/module.py).
    print(
        f"validation as served: account AUROC {m['account_auroc']:.4f}, TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}, "
        f"benign ever blocked {m['benign_ever_blocked']:.2%}, ever non-allow {m['benign_ever_non_allow']:.2%}"
    )
    print(result.promotion.summary)
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0
