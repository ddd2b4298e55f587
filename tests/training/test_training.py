"""A tiny end-to-end training run: MLflow run, registered version, bundle, export parity."""

from __future__ import annotations

import pytest

from moat.models.bundle import load_bundle
from moat.models.feature_spec import WINDOW


def test_run_is_tracked_registered_and_bundled(trained) -> None:
    from mlflow import MlflowClient

    result, uri = trained
    meta, onnx = load_bundle(result.bundle)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.data.params["feature_spec"] == meta.feature_spec_version
    assert "final_account_auroc" in run.data.metrics
    assert any(k.startswith("val_auroc") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/meta.json", "bundle/card.md"} <= artifacts
    champion = client.get_model_version_by_alias("moat-risk", "champion")
    assert champion.version == result.promotion.version and result.promotion.promoted
    assert meta.calibration.temperature > 0 and 0 <= meta.thresholds.throttle <= meta.thresholds.block
    assert meta.data_stats["train"]["events"] > 0
    assert "Known limits" in (result.bundle / "card.md").read_text()


def test_onnx_matches_torch_at_several_shapes(trained) -> None:
    from moat.training.export import parity
    from moat.training.module import RiskModule

    result, uri = trained
    # Rebuild the torch net from the registered checkpoint and compare with the bundle's ONNX.
    import mlflow

    mlflow.set_tracking_uri(uri)
    ckpt_dir = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="checkpoint")
    from pathlib import Path

    net = RiskModule.load_from_checkpoint(next(Path(ckpt_dir).glob("*.ckpt")), map_location="cpu").net.eval()
    assert parity(net, result.bundle / "model.onnx", batches=(1, 2, 7), lengths=(1, 5, WINDOW)) <= 1e-4


@pytest.mark.parametrize("champion_score, promoted", [(0.0, True), (1.0, False), (None, True)])
def test_champion_moves_only_when_beaten(trained, champion_score, promoted) -> None:
    from moat.training.registry import register_and_promote

    result, uri = trained
    before = result.promotion.version
    p = register_and_promote(result.run_id, "bundle", 0.5, lambda _: champion_score, uri)
    assert p.promoted is promoted
    assert ("not promoted" in p.reason) is (not promoted)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    champ = client.get_model_version_by_alias("moat-risk", "champion")
    if promoted:
        assert champ.version == p.version
        client.set_registered_model_alias("moat-risk", "champion", before)  # restore for the next case
    else:
        assert champ.version == before


def test_scores_ignore_ground_truth_fields(trained, tiny_traces, tmp_path) -> None:
    from moat.models.traces import iter_raw
    from moat.serving.replay_cli import replay
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    result, _ = trained
    events = [e for _, e in zip(range(400), iter_raw(tiny_traces / "test.jsonl"))]
    stripped = [{k: v for k, v in e.items() if k not in ("label", "family", "actor")} for e in events]
    outs = []
    for evs in (events, stripped):
        got: list[dict] = []
        replay(Scorer(ServingSettings(model=str(result.bundle))), evs, got.append)
        outs.append(got)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("source", ["registry", "checkpoint"])
def test_export_rebuilds_a_loadable_bundle(trained, tiny_traces, tmp_path, source) -> None:
    import argparse
    from pathlib import Path

    import mlflow

    from moat.training.export_cli import add_arguments, run

    result, uri = trained
    p = argparse.ArgumentParser()
    add_arguments(p)
    if source == "registry":
        argv = ["--registry", f"models:/moat-risk/{result.promotion.version}", "--tracking-uri", uri]
    else:
        mlflow.set_tracking_uri(uri)
        ckpt = next(Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="checkpoint")).glob("*.ckpt"))
        argv = ["--checkpoint", str(ckpt), "--data", str(tiny_traces)]
    assert run(p.parse_args([*argv, "--out", str(tmp_path / "b"), "--no-progress"])) == 0
    meta, _ = load_bundle(tmp_path / "b")
    original, _ = load_bundle(result.bundle)
    assert meta.thresholds == original.thresholds or source == "checkpoint"


def test_serving_loads_the_champion_from_the_registry(trained, monkeypatch) -> None:
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    result, uri = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sc = Scorer(ServingSettings(model="models:/moat-risk@champion"))
    assert sc.model_version == load_bundle(result.bundle)[0].model_version
