"""`moat export`: re-export a bundle from a Lightning checkpoint or from a registry version.

  moat export --checkpoint CKPT --data DIR --out BUNDLE
      recalibrates and chooses thresholds on DIR's validation trace, then exports
  moat export --registry models:/moat-risk@champion --out BUNDLE
      takes that version's checkpoint and metadata from MLflow and exports it again
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Lightning checkpoint (.ckpt)")
    src.add_argument("--registry", help="registry model URI, e.g. models:/moat-risk@champion or models:/moat-risk/3")
    p.add_argument("--data", type=Path, help="with --checkpoint: directory holding val.jsonl for calibration")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--no-progress", action="store_true")


def _registry_sources(uri: str, tracking: str | None) -> tuple[Path, Path]:
    """The checkpoint and bundle directory that a registry version was trained as."""
    import mlflow

    from moat.models.bundle_source import registry_version, resolve_registry_uri

    bundle_dir = resolve_registry_uri(uri, tracking)
    mv = registry_version(uri, tracking)
    ckpt_dir = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="checkpoint"))
    ckpts = sorted(ckpt_dir.glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{uri}: run {mv.run_id} logged no checkpoint")
    return ckpts[0], bundle_dir


def run(args: argparse.Namespace) -> int:
    import json

    from moat.models.bundle import BundleMeta, read_meta, sha256_file, write_meta
    from moat.training.card import render_card
    from moat.training.config import TrainConfig
    from moat.training.datamodule import TraceDataModule
    from moat.training.export import export_onnx, parity
    from moat.training.module import RiskModule
    from moat.training.sequences import featurize_trace
    from moat.training.trainer import finalize_bundle

    try:
        if args.checkpoint:
            if not args.data:
                print("moat export: error: --checkpoint needs --data DIR (its val trace calibrates the model)", file=sys.stderr)
                return 2
            net = RiskModule.load_from_checkpoint(args.checkpoint, map_location="cpu").net.eval()
            val = featurize_trace(TraceDataModule.trace_path(args.data, "val"), progress=not args.no_progress)
            stats = args.data / "stats.json"
            meta = finalize_bundle(net, args.out, val, TrainConfig(), json.loads(stats.read_text()) if stats.is_file() else {}, not args.no_progress)
        else:
            ckpt, src = _registry_sources(args.registry, args.tracking_uri)
            net = RiskModule.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
            old = read_meta(src)
            args.out.mkdir(parents=True, exist_ok=True)
            export_onnx(net, args.out / "model.onnx")
            worst = parity(net, args.out / "model.onnx")
            digest = sha256_file(args.out / "model.onnx")
            meta = BundleMeta.model_validate({**old.model_dump(), "onnx_sha256": digest, "model_version": f"moat-{digest[:12]}", "metrics": {**old.metrics, "onnx_parity_max_abs": worst}})
            write_meta(args.out, meta)
            (args.out / "card.md").write_text(render_card(meta), encoding="utf-8")
    except (FileNotFoundError, ValueError) as exc:
        print(f"moat export: error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle: {args.out} ({meta.model_version}), ONNX parity {meta.metrics.get('onnx_parity_max_abs', float('nan')):.1e}")
    return 0
