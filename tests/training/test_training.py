"""A tiny end-to-end training run: MLflow run, registered version, bundle, export parity; and
the train/export command lines' errors."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from moat.models.bundle import load_bundle
from moat.models.feature_spec import WINDOW
from moat.training.calibrate import CalibrationTargets

ROOT = Path(__file__).resolve().parents[2]
# Unlike TrainConfig()'s defaults (0.5; 0.001, 0.005, 0.01), so that an export which fell back
# on the defaults instead of the run's own targets produces a different bundle.
RUN_TARGETS = CalibrationTargets(corroboration=0.8, target_block_fpr=0.02, target_perturb_fpr=0.05, target_action_fpr=0.1)


@dataclass
class TrainedRun:
    bundle: Path
    run_id: str
    version: str  # its registry version
    uri: str
    cwd: Path  # the directory `moat train` ran in
    stdout: str
    env_uri: tuple[str | None, str | None]  # MLFLOW_TRACKING_URI before `moat train` ran and once it returned


@pytest.fixture(scope="module")
def trained(tiny_traces: Path, tmp_path_factory) -> TrainedRun:
    """One quick `moat train` with the run's own calibration targets in its --config. It runs
    from an empty working directory, which must stay empty: MLflow's artifacts belong beside
    its database, not wherever the command ran."""
    from mlflow import MlflowClient

    from moat.training.cli import add_arguments, run

    tmp = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    config = tmp / "train.json"
    config.write_text(json.dumps({"windows_per_epoch": 256, "max_epochs": 2, **asdict(RUN_TARGETS)}))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--data", str(tiny_traces), "--out", str(tmp / "bundle"), "--quick", "--config", str(config), "--tracking-uri", uri, "--no-progress"])
    cwd = tmp / "cwd"
    cwd.mkdir()
    before, stdout = Path.cwd(), io.StringIO()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout):
            assert run(args) == 0
    finally:
        os.chdir(before)
    env_uri = (env_before, os.environ.get("MLFLOW_TRACKING_URI"))
    champion = MlflowClient(tracking_uri=uri).get_model_version_by_alias("moat-risk", "champion")
    return TrainedRun(tmp / "bundle", champion.run_id, champion.version, uri, cwd, stdout.getvalue(), env_uri)


def checkpoint(trained: TrainedRun, into: Path) -> Path:
    import mlflow

    ckpt_dir = mlflow.artifacts.download_artifacts(run_id=trained.run_id, artifact_path="checkpoint", dst_path=str(into), tracking_uri=trained.uri)
    return next(Path(ckpt_dir).glob("*.ckpt"))


def export(argv: list[str]) -> int:
    from moat.training.export_cli import add_arguments, run

    p = argparse.ArgumentParser()
    add_arguments(p)
    return run(p.parse_args([*argv, "--no-progress"]))


def test_run_is_tracked_registered_and_bundled(trained: TrainedRun) -> None:
    from mlflow import MlflowClient

    meta, onnx = load_bundle(trained.bundle)
    client = MlflowClient(tracking_uri=trained.uri)
    run = client.get_run(trained.run_id)
    assert run.data.params["feature_spec"] == meta.feature_spec_version
    assert run.data.params["net/hidden"] == str(meta.net["hidden"])
    assert set(meta.net) == {"hidden", "layers", "heads", "ffn", "dropout", "token_vocab", "n_features", "n_tokens", "window"}
    assert "final_account_auroc" in run.data.metrics
    assert "val_window_auroc" in run.data.metrics and "val_auroc" not in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/meta.json", "bundle/card.md"} <= artifacts
    assert meta.calibration.temperature > 0 and 0 <= meta.thresholds.throttle <= meta.thresholds.block
    assert meta.calibration.corroboration == RUN_TARGETS.corroboration
    assert meta.data_stats["train"]["events"] > 0
    assert "Known limits" in (trained.bundle / "card.md").read_text()


def test_train_reports_the_champion_it_set(trained: TrainedRun) -> None:
    # The fixture's registry was empty: its version is the first, and now the champion.
    lines = trained.stdout.splitlines()
    assert f"registered moat-risk v{trained.version}; promoted to champion (first version)" in lines
    assert any(line.startswith("bundle: ") and line.endswith(f"(MLflow run {trained.run_id})") for line in lines)
    assert any(line.startswith("validation as served: account AUROC ") for line in lines)
    assert "no champion" not in trained.stdout


def test_mlflow_writes_beside_its_database_only(trained: TrainedRun) -> None:
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=trained.uri).get_run(trained.run_id)
    db_dir = Path(trained.uri.removeprefix("sqlite:///")).parent
    assert run.info.artifact_uri.startswith((db_dir / "mlartifacts").as_uri())
    assert list(trained.cwd.iterdir()) == []


def test_onnx_matches_torch_at_several_shapes(trained: TrainedRun, tmp_path) -> None:
    from moat.training.export import parity
    from moat.training.module import RiskModule

    # Rebuild the torch net from the registered checkpoint and compare with the bundle's ONNX.
    net = RiskModule.load_from_checkpoint(checkpoint(trained, tmp_path), map_location="cpu").net.eval()
    assert parity(net, trained.bundle / "model.onnx", batches=(1, 2, 7), lengths=(1, 5, WINDOW)) <= 1e-4


@pytest.mark.parametrize("champion_score, promoted", [(0.0, True), (1.0, False), (None, True)])
def test_champion_moves_only_when_beaten(trained: TrainedRun, champion_score, promoted) -> None:
    from mlflow import MlflowClient

    from moat.training.registry import register_and_promote

    p = register_and_promote(trained.run_id, "bundle", 0.5, lambda _: champion_score, trained.uri)
    assert p.promoted is promoted
    assert p.summary.startswith(f"registered moat-risk v{p.version}; {'promoted to champion' if promoted else 'not promoted'} (")
    client = MlflowClient(tracking_uri=trained.uri)
    champ = client.get_model_version_by_alias("moat-risk", "champion")
    if promoted:
        assert champ.version == p.version
        client.set_registered_model_alias("moat-risk", "champion", trained.version)  # restore for the next case
    else:
        assert champ.version == trained.version


def test_scores_ignore_ground_truth_fields(trained: TrainedRun, tiny_traces) -> None:
    from moat.models.traces import iter_raw
    from moat.serving.replay_cli import replay
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    events = [e for _, e in zip(range(400), iter_raw(tiny_traces / "test.jsonl"))]
    stripped = [{k: v for k, v in e.items() if k not in ("label", "family", "actor")} for e in events]
    outs = []
    for evs in (events, stripped):
        got: list[dict] = []
        replay(Scorer(ServingSettings(time_source="caller", model=str(trained.bundle))), evs, got.append)
        outs.append(got)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("source", ["registry", "checkpoint"])
def test_export_keeps_the_runs_calibration(trained: TrainedRun, tiny_traces, tmp_path, source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'caller.db'}")  # the caller's own, not the registry's
    if source == "registry":
        argv = ["--registry", f"models:/moat-risk/{trained.version}", "--tracking-uri", trained.uri]
    else:
        argv = ["--checkpoint", str(checkpoint(trained, tmp_path)), "--data", str(tiny_traces)]
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    assert export([*argv, "--out", str(tmp_path / "b")]) == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # the download left the process's URI alone
    meta, _ = load_bundle(tmp_path / "b")
    original, _ = load_bundle(trained.bundle)
    # The registry copies the run's calibration; the checkpoint is recalibrated on the same
    # validation trace for the targets and corroboration it recorded, so it lands on the same.
    assert meta.calibration == original.calibration
    assert meta.targets == original.targets == {"benign_ever_blocked": 0.02, "benign_ever_perturbed": 0.05, "benign_ever_non_allow": 0.1}
    assert meta.thresholds == original.thresholds


def test_export_refuses_a_checkpoint_without_its_runs_targets(trained: TrainedRun, tiny_traces, tmp_path, capsys) -> None:
    import torch

    state = torch.load(checkpoint(trained, tmp_path), map_location="cpu", weights_only=False)
    del state["hyper_parameters"]["calibration"]  # as checkpoints saved before it was recorded
    torch.save(state, tmp_path / "old.ckpt")
    capsys.readouterr()  # the download's progress bar
    assert export(["--checkpoint", str(tmp_path / "old.ckpt"), "--data", str(tiny_traces), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moat export: error: --checkpoint") and "records no calibration targets" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("models:/moat-risk@prod", "has no alias 'prod' of model 'moat-risk'"),
        ("models:/moat-risk/999", "has no version 999 of model 'moat-risk'"),
        ("models:/nope@champion", "has no alias 'champion' of model 'nope'"),
    ],
)
def test_export_names_a_missing_registry_version_in_one_line(trained: TrainedRun, tmp_path, capsys, uri, expected) -> None:
    assert export(["--registry", uri, "--tracking-uri", trained.uri, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moat export: error: {uri}: ") and expected in err and err.count("\n") == 1


def test_serving_loads_the_champion_from_the_registry(trained: TrainedRun, monkeypatch) -> None:
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    sc = Scorer(ServingSettings(time_source="caller", model="models:/moat-risk@champion"))
    assert sc.model_version == load_bundle(trained.bundle)[0].model_version


def test_resolving_a_registry_bundle_leaves_the_callers_tracking_uri(trained: TrainedRun, tmp_path, monkeypatch) -> None:
    from moat.models.bundle_source import resolve_registry_uri

    caller = f"sqlite:///{tmp_path / 'caller.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", caller)
    bundle = resolve_registry_uri(f"models:/moat-risk/{trained.version}", trained.uri)
    assert load_bundle(bundle)[0].model_version == load_bundle(trained.bundle)[0].model_version
    assert os.environ["MLFLOW_TRACKING_URI"] == caller


# Runs one command's run() in a fresh interpreter, to see what it imported before failing.
_RUN_AND_REPORT = """
import argparse, importlib, json, sys
module = importlib.import_module(sys.argv[1])
parser = argparse.ArgumentParser()
module.add_arguments(parser)
rc = module.run(parser.parse_args(sys.argv[2:]))
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
"""

# (case, command module, arguments with {tmp} for the test's directory, expected error)
ARGUMENT_ERRORS = [
    ("no data dir", "moat.training.cli", ["--data", "{tmp}/nope", "--out", "{tmp}/b"], "moat train: error: --data {tmp}/nope: no such directory"),
    ("no val split", "moat.training.cli", ["--data", "{tmp}/half", "--out", "{tmp}/b"], "moat train: error: --data {tmp}/half: no val.jsonl[.gz]"),
    ("config not json or toml", "moat.training.cli", ["--data", "{tmp}/data", "--out", "{tmp}/b", "--config", "{tmp}/c.yaml"], "moat train: error: --config {tmp}/c.yaml: expected a .json or .toml file"),
    ("no config file", "moat.training.cli", ["--data", "{tmp}/data", "--out", "{tmp}/b", "--config", "{tmp}/c.json"], "moat train: error: --config {tmp}/c.json: no such file"),
    ("out is a file", "moat.training.cli", ["--data", "{tmp}/data", "--out", "{tmp}/file"], "moat train: error: --out {tmp}/file: exists and is not a directory"),
    ("out holds other files", "moat.training.cli", ["--data", "{tmp}/data", "--out", "{tmp}/data"], "moat train: error: --out {tmp}/data: a non-empty directory that is not a bundle"),
    ("registry uri syntax", "moat.training.export_cli", ["--registry", "models:/moat-risk", "--out", "{tmp}/b"], "moat export: error: --registry models:/moat-risk: expected models:/NAME@ALIAS"),
    ("no checkpoint file", "moat.training.export_cli", ["--checkpoint", "{tmp}/x.ckpt", "--data", "{tmp}/data", "--out", "{tmp}/b"], "moat export: error: --checkpoint {tmp}/x.ckpt: no such file"),
    ("checkpoint without data", "moat.training.export_cli", ["--checkpoint", "{tmp}/file", "--out", "{tmp}/b"], "moat export: error: --checkpoint needs --data DIR"),
    ("export into a data dir", "moat.training.export_cli", ["--checkpoint", "{tmp}/file", "--data", "{tmp}/data", "--out", "{tmp}/data"], "moat export: error: --out {tmp}/data: a non-empty"),
]


@pytest.mark.parametrize("case, module, argv, expected", ARGUMENT_ERRORS, ids=[c[0] for c in ARGUMENT_ERRORS])
def test_bad_arguments_fail_in_one_line_before_torch(tmp_path, case, module, argv, expected) -> None:
    for split in ("train", "val"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{split}.jsonl").write_text("")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.jsonl").write_text("")
    (tmp_path / "file").write_text("")
    (tmp_path / "c.yaml").write_text("lr: 0.1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, module, *args], capture_output=True, text=True, cwd=tmp_path, check=False)
    report = json.loads(proc.stdout)
    assert report == {"rc": 2, "torch": False}, proc.stderr
    assert proc.stderr.startswith(expected.replace("{tmp}", str(tmp_path))) and proc.stderr.count("\n") == 1, proc.stderr


# (case, config file name and text, environment, expected values or error fragment)
CONFIGS = [
    ("net section, JSON", ("c.json", '{"net": {"hidden": 16, "heads": 2}, "lr": 0.01}'), {}, {"net.hidden": 16, "net.heads": 2, "net.layers": 2, "lr": 0.01}),
    ("net section, TOML", ("c.toml", "lr = 0.01\n[net]\nlayers = 3\n"), {}, {"net.layers": 3, "net.hidden": 32, "lr": 0.01}),
    ("net from the environment", None, {"MOAT_TRAIN_NET__LAYERS": "1", "MOAT_TRAIN_CORROBORATION": "0.7"}, {"net.layers": 1, "corroboration": 0.7}),
    ("file wins over the environment", ("c.json", '{"net": {"layers": 4}}'), {"MOAT_TRAIN_NET__LAYERS": "1"}, {"net.layers": 4}),
    ("the shipped LOFO config", (str(ROOT / "configs" / "lofo_full.json"), None), {}, {"max_epochs": 12, "windows_per_epoch": 6000, "patience": 3}),
    ("old top-level net field in a file", ("c.json", '{"hidden": 64}'), {}, "hidden is now net.hidden"),
    ("old net variable", None, {"MOAT_TRAIN_LAYERS": "3"}, "layers is now net.layers"),
    ("input sizes are the feature spec's", ("c.json", '{"net": {"window": 8}}'), {}, "net: window is the feature spec's"),
    ("unknown net field", ("c.json", '{"net": {"hiden": 8}}'), {}, "net.hiden: Unexpected keyword argument"),
    ("bad JSON", ("c.json", '{"net": '), {}, "c.json: Expecting value"),
]


@pytest.mark.parametrize("case, file, env, expected", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_config_sources(tmp_path, monkeypatch, case, file, env, expected) -> None:
    from moat.training.config import ConfigError, TrainConfig

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = None
    if file is not None:
        name, text = file
        path = tmp_path / name if text is not None else Path(name)
        if text is not None:
            path.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as err:
            TrainConfig.load(path, quick=True)
        assert expected in str(err.value) and "\n" not in str(err.value)
        return
    cfg = TrainConfig.load(path, quick=True)  # the file's values must win over --quick's
    for dotted, value in expected.items():
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert obj == value, dotted


def test_training_leaves_the_process_tracking_uri_alone(trained: TrainedRun) -> None:
    """MLflow's set_tracking_uri, called by Lightning's logger, writes MLFLOW_TRACKING_URI into
    the environment: after leave-one-family-out trained into a throwaway registry, the
    evaluation's own logging went to that deleted database."""
    before, after = trained.env_uri
    assert after == before and after != trained.uri
