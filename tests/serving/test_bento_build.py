"""`make bento` builds the service's bento from the project wheel (which carries the default
bundle) and the serve requirements only; a bundle saved to the BentoML model store can be served
from there."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "lightning", "mlflow")


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("bentoml")
    # The real recipe, in the interpreter's venv: STAMP= drops its set-up-.venv prerequisite.
    cmd = ["make", "-s", "bento", "STAMP=", f"BIN={Path(sys.executable).parent}"]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (built,) = [b for b in (home / "bentos" / "moat").iterdir() if (b / "bento.yaml").is_file()]
    return built


@pytest.fixture(scope="module")
def wheel(bento: Path) -> Path:
    (whl,) = (bento / "env" / "python" / "wheels").glob("moat-*.whl")
    return whl


def test_requirements_hold_no_training_stack(bento: Path) -> None:
    for name in ("requirements.txt", "requirements.lock.txt"):
        path = bento / "env" / "python" / name
        if path.exists():
            reqs = path.read_text().lower()
            assert "onnxruntime" in reqs, name
            assert not [h for h in HEAVY if h in reqs], name


def test_bentofile_requires_the_core_and_the_serve_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert set(bentofile["python"]["packages"]) == set(project["dependencies"]) | set(project["optional-dependencies"]["serve"])


def test_src_holds_no_source_tree(bento: Path) -> None:
    """The code comes from the wheel; a copied source folder would shadow it, and bring training."""
    assert sorted(p.name for p in (bento / "src").rglob("*")) == ["bentofile.yaml"]
    assert yaml.safe_load((bento / "bento.yaml").read_text())["service"] == "moat.serving.service:MoatService"


def test_wheel_carries_the_default_model(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"moat/models/default/model.onnx", "moat/models/default/meta.json", "moat/serving/service.py"} <= names


def test_service_imports_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    """With site processing off (no editable install) and the wheel before the venv's
    dependencies, `moat` resolves to the wheel and the service loads its default bundle."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages")
    code = (
        "import moat, moat.serving.service as s\n"
        "from moat.models.bundle import DEFAULT_BUNDLE, load_bundle\n"
        "print(moat.__file__, s.MoatService.name, load_bundle(DEFAULT_BUNDLE)[0].model_version)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(deps)])}
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    where, name, version = r.stdout.split()
    assert Path(where).is_relative_to(tmp_path / "site") and name == "moat" and version.startswith("moat-")


def test_bundle_round_trips_through_the_bentoml_model_store(tmp_path: Path) -> None:
    code = (
        "from moat.models.bundle_source import save_to_bentoml, resolve_model\n"
        "from moat.models.bundle import DEFAULT_BUNDLE, load_bundle\n"
        "tag = save_to_bentoml(DEFAULT_BUNDLE)\n"
        "print(load_bundle(resolve_model('bentoml:' + tag))[0].model_version == load_bundle(DEFAULT_BUNDLE)[0].model_version)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}, capture_output=True, text=True)
    assert out.stdout.strip().endswith("True"), out.stderr[-2000:]
