"""Orchestrates one training run: fit, calibrate, choose thresholds, export, log, register."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from moat.models.bundle import BundleMeta, Calibration, load_bundle, sha256_file, write_meta
from moat.models.bundle_source import artifact_location, tracking_uri, tracking_uri_kept
from moat.models.feature_spec import FEATURE_SPEC_VERSION, N_FEATURES, N_TOKENS, WINDOW
from moat.models.network import RiskNet, count_parameters
from moat.training.calibrate import CalibrationTargets, account_scores, choose_thresholds, event_risk, exact_logits, fit_temperature, summary_metrics
from moat.training.card import render_card
from moat.training.config import TrainConfig
from moat.training.datamodule import TraceDataModule
from moat.training.export import export_onnx, parity
from moat.training.module import MONITOR, RiskModule
from moat.training.registry import Promotion, register_and_promote
from moat.training.sequences import Sequences

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    bundle: Path
    run_id: str
    metrics: dict
    promotion: Promotion


def torch_runner(net: RiskNet):
    net = net.eval()

    def run(feats: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(feats), torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()

    return run


def onnx_runner(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda f, t, m: sess.run(["logits"], {"feats": f, "tokens": t, "mask": m})[0]


def bundle_account_auroc(bundle_dir: Path, val: Sequences) -> float | None:
    """Validation account AUROC of any bundle with this feature spec (used against the champion)."""
    from moat.models.bundle import BundleError

    try:
        meta, onnx_path = load_bundle(bundle_dir)
    except BundleError as exc:
        log.warning("champion bundle not comparable: %s", exc)
        return None
    logits = exact_logits(onnx_runner(onnx_path), val)
    scores = account_scores(val, event_risk(val, logits, meta.calibration.temperature, meta.calibration.corroboration, meta.thresholds))
    return summary_metrics(scores, meta.thresholds)["account_auroc"]


def finalize_bundle(net: RiskNet, out: Path, val: Sequences, targets: CalibrationTargets, data_stats: dict, progress: bool) -> BundleMeta:
    """Calibrate on validation, choose thresholds, export ONNX with a parity check, write the bundle."""
    out.mkdir(parents=True, exist_ok=True)
    logits = exact_logits(torch_runner(net), val, progress=progress)
    rows_labels = val.labels
    temperature = fit_temperature(logits, rows_labels)
    # Own risk alone decides who is ever acted on or blocked (shared scopes act only on accounts
    # already at the throttle threshold, and never block), so thresholds are chosen on it; the
    # reported metrics use the full policy combination with those thresholds.
    thresholds = choose_thresholds(account_scores(val, event_risk(val, logits, temperature, targets.corroboration)), targets)
    scores = account_scores(val, event_risk(val, logits, temperature, targets.corroboration, thresholds))
    metrics = summary_metrics(scores, thresholds)
    onnx_path = out / "model.onnx"
    export_onnx(net, onnx_path)
    metrics["onnx_parity_max_abs"] = parity(net, onnx_path)
    metrics["parameters"] = float(count_parameters(net))
    digest = sha256_file(onnx_path)
    meta = BundleMeta(
        feature_spec_version=FEATURE_SPEC_VERSION,
        window=WINDOW,
        n_features=N_FEATURES,
        n_tokens=N_TOKENS,
        model_version=f"moat-{digest[:12]}",
        onnx_sha256=digest,
        calibration=Calibration(temperature=temperature, corroboration=targets.corroboration),
        thresholds=thresholds,
        targets={"benign_ever_blocked": targets.target_block_fpr, "benign_ever_perturbed": targets.target_perturb_fpr, "benign_ever_non_allow": targets.target_action_fpr},
        net=net.cfg.as_dict(),
        data_stats=data_stats,
        metrics=metrics,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_meta(out, meta)
    (out / "card.md").write_text(render_card(meta), encoding="utf-8")
    return meta


def input_range(seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's smallest and largest value over the training rows: the range the
    network clips its inputs to (models/network.py)."""
    feats = torch.from_numpy(seqs.feats.astype(np.float32))
    return feats.amin(dim=0), feats.amax(dim=0)


def train(data_dir: Path, out: Path, cfg: TrainConfig, uri: str | None = None, progress: bool = True) -> TrainResult:
    """One training run into the registry at `uri` (see tracking_uri); the process's own MLflow
    tracking URI is left as it was."""
    with tracking_uri_kept():
        return _train(data_dir, out, cfg, uri, progress)


def _train(data_dir: Path, out: Path, cfg: TrainConfig, uri: str | None, progress: bool) -> TrainResult:
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    uri = tracking_uri(uri)
    dm = TraceDataModule(data_dir, cfg.batch_size, cfg.windows_per_epoch, cfg.shared_scope_weight, cfg.seed, cfg.num_workers, progress)
    dm.setup()
    assert dm.train is not None and dm.val is not None
    targets = cfg.calibration_targets()
    module = RiskModule(
        net=cfg.net.as_dict(), lr=cfg.lr, weight_decay=cfg.weight_decay, val_seq_labels=dm.val.label.tolist(),
        jitter_p=cfg.jitter_p, jitter_scale=cfg.jitter_scale, calibration=asdict(targets), token_drop=cfg.token_drop, decoding_borrow_p=cfg.decoding_borrow_p,
    )
    # A buffer of the net: checkpoints and the ONNX export carry it with the weights.
    module.net.set_input_range(*input_range(dm.train))
    stats_path = data_dir / "stats.json"
    data_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    logger = MLFlowLogger(experiment_name=cfg.experiment, tracking_uri=uri, artifact_location=artifact_location(uri), log_model=False)
    logger.log_hyperparams({**cfg.model_dump(), "data_dir": str(data_dir), "train_sequences": len(dm.train), "val_sequences": len(dm.val), "feature_spec": FEATURE_SPEC_VERSION})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=MONITOR, mode="max", save_top_k=1, filename="best")
        trainer = pl.Trainer(
            max_epochs=cfg.max_epochs,
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            strategy=cfg.strategy,
            callbacks=[EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience), ckpt],
            logger=logger,
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=10,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=dm)
        best = RiskModule.load_from_checkpoint(ckpt.best_model_path, map_location="cpu") if ckpt.best_model_path else module
        net = best.net.cpu().eval()
        meta = finalize_bundle(net, out, dm.val, targets, data_stats, progress)
        run_id = logger.run_id
        client = logger.experiment
        for k, v in meta.metrics.items():
            client.log_metric(run_id, f"final_{k}", float(v))
        client.log_artifacts(run_id, str(out), artifact_path="bundle")
        if ckpt.best_model_path:
            client.log_artifact(run_id, ckpt.best_model_path, artifact_path="checkpoint")
        if stats_path.is_file():
            client.log_artifact(run_id, str(stats_path), artifact_path="data")
    promotion = register_and_promote(run_id, "bundle", meta.metrics["account_auroc"], lambda d: bundle_account_auroc(d, dm.val), uri)
    client.set_tag(run_id, "registry_version", promotion.version)
    client.set_tag(run_id, "promotion", promotion.summary)
    return TrainResult(out, run_id, meta.metrics, promotion)
