"""The `bentoml build` recipe builds, with the serve dependencies only, and a bundle saved to
the BentoML model store can be served from there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "lightning", "mlflow")


def test_bento_builds_without_the_training_stack(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    bentos = list((tmp_path / "bentoml" / "bentos" / "moat").glob("*/"))
    assert bentos, "no bento written"
    bento = next(b for b in bentos if b.is_dir() and (b / "bento.yaml").exists())
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime" in reqs and not any(h in reqs for h in HEAVY)
    assert (bento / "src" / "models" / "default" / "model.onnx").is_file()
    assert not (bento / "src" / "training").exists()


def test_bundle_round_trips_through_the_bentoml_model_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    code = (
        "from moat.models.bundle_source import save_to_bentoml, resolve_model\n"
        "from models.bundle import DEFAULT_BUNDLE, load_bundle\n"
        "tag = save_to_bentoml(DEFAULT_BUNDLE)\n"
        "print(load_bundle(resolve_model('bentoml:' + tag))[0].model_version == load_bundle(DEFAULT_BUNDLE)[0].model_version)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}, capture_output=True, text=True)
    assert out.stdout.strip().endswith("True"), out.stderr[-2000:]
