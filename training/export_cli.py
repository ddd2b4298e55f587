"""`moat export`: re-export a bundle from a Lightning checkpoint or from a registry version.

  moat export --checkpoint CKPT --data DIR --out BUNDLE
      recalibrates and chooses thresholds on DIR's validation trace for the targets and
      corroboration that the checkpoint's run used (recorded in the checkpoint), then exports
  moat export --registry models:/moat-risk@champion --out BUNDLE
      takes that version's checkpoint and metadata from MLflow and exports it again
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Lightning checkpoint (.ckpt)")
    src.add_argument("--registry", help="registry model URI, e.g. models:/moat-risk@champion or models:/moat-risk/3")
    p.add_argument("--data", type=Path, help="with --checkpoint: directory holding val.jsonl for calibration")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check(args: argparse.Namespace) -> None:
    """Argument errors, found without torch (ArgumentError)."""
    from moat.training.arguments import ArgumentError, check_checkpoint, check_data_dir, check_out_dir, check_registry_uri

    if args.checkpoint:
        check_checkpoint(args.checkpoint)
        if not args.data:
            raise ArgumentError("--checkpoint needs --data DIR (its val trace calibrates the model)")
        check_data_dir(args.data, ("val",))
    else:
        check_registry_uri(args.registry)
    check_out_dir(args.out)


def _registry_sources(uri: str, tracking: str | None, into: Path) -> tuple[Path, Path]:
    """The checkpoint and bundle directory that a registry version was trained as, downloaded
    into `into`. BundleError (one line) when the registry has no such version."""
    import mlflow

    from moat.models.bundle_source import registry_version, tracking_uri

    mv = registry_version(uri, tracking)
    store = tracking_uri(tracking)
    bundle_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(into / "bundle"), tracking_uri=store))
    ckpt_dir = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="checkpoint", dst_path=str(into), tracking_uri=store))
    ckpts = sorted(ckpt_dir.glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{uri}: run {mv.run_id} logged no checkpoint")
    return ckpts[0], bundle_dir


def _from_checkpoint(args: argparse.Namespace):  # -> BundleMeta
    import json

    from moat.training.calibrate import CalibrationTargets
    from moat.training.module import RiskModule
    from moat.training.sequences import featurize_trace, trace_file
    from moat.training.trainer import finalize_bundle

    module = RiskModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    recorded = module.hparams.get("calibration")
    if not recorded:
        # Defaults would silently calibrate for targets the run never chose.
        raise ValueError(f"--checkpoint {args.checkpoint}: records no calibration targets (saved by an older moat); export its run with --registry instead")
    val = featurize_trace(trace_file(args.data, "val"), progress=not args.no_progress)
    stats = args.data / "stats.json"
    data_stats = json.loads(stats.read_text()) if stats.is_file() else {}
    return finalize_bundle(module.net.eval(), args.out, val, CalibrationTargets(**recorded), data_stats, not args.no_progress)


def _from_registry(args: argparse.Namespace):  # -> BundleMeta
    from moat.models.bundle import BundleMeta, read_meta, sha256_file, write_meta
    from moat.training.card import render_card

    with tempfile.TemporaryDirectory() as tmp:
        ckpt, src = _registry_sources(args.registry, args.tracking_uri, Path(tmp))
        old = read_meta(src)
        # torch only once the registry has answered: an unknown version fails at once.
        from moat.training.export import export_onnx, parity
        from moat.training.module import RiskModule

        net = RiskModule.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    export_onnx(net, args.out / "model.onnx")
    worst = parity(net, args.out / "model.onnx")
    digest = sha256_file(args.out / "model.onnx")
    meta = BundleMeta.model_validate({**old.model_dump(), "onnx_sha256": digest, "model_version": f"moat-{digest[:12]}", "metrics": {**old.metrics, "onnx_parity_max_abs": worst}})
    write_meta(args.out, meta)
    (args.out / "card.md").write_text(render_card(meta), encoding="utf-8")
    return meta


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        meta = _from_checkpoint(args) if args.checkpoint else _from_registry(args)
    except (FileNotFoundError, ValueError) as exc:  # ArgumentError and BundleError are ValueErrors
        print(f"moat export: error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle: {args.out} ({meta.model_version}), ONNX parity {meta.metrics.get('onnx_parity_max_abs', float('nan')):.1e}")
    return 0
