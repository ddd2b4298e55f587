"""The wheel holds one `moat` namespace, and the layer contract holds on what it installs.

import-linter (grimp) walks a package's directory, so it runs on the unpacked wheel, where the
top-level folders of the source tree sit under `moat/` as they do for a user."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tracked sources (setuptools writes build/ beside the
    sources it builds), then unpack it as pip would install it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("moat-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def test_wheel_installs_only_the_moat_namespace(unpacked_wheel: Path) -> None:
    top = {p.name for p in unpacked_wheel.iterdir() if not p.name.endswith(".dist-info")}
    assert top == {"moat"}
    for part in ("models", "data_gen", "training", "serving", "evals"):
        assert (unpacked_wheel / "moat" / part / "__init__.py").is_file(), part
    assert (unpacked_wheel / "moat" / "models" / "default" / "model.onnx").is_file()


def _lint(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml")], cwd=site, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_layer_contracts_hold(unpacked_wheel: Path) -> None:
    r = _lint(unpacked_wheel)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("models/bundle.py", "import moat.serving.scorer", "layers point down"),  # core importing up
        ("training/calibrate.py", "import moat.serving.settings", "layers point down"),  # siblings
        ("data_gen/text.py", "import moat.evals.metrics_table", "layers point down"),  # up to evals
        ("serving/policy_view.py", "import torch", "never import the training stack"),
    ],
)
def test_a_wrong_import_breaks_the_contract(unpacked_wheel: Path, tmp_path: Path, module: str, wrong_import: str, contract: str) -> None:
    site = tmp_path / "site"
    shutil.copytree(unpacked_wheel, site)
    path = site / "moat" / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{wrong_import}\n")
    if wrong_import.startswith("import moat.evals.metrics_table"):
        (site / "moat" / "evals" / "metrics_table.py").write_text("")
    r = _lint(site)
    assert r.returncode != 0
    assert contract in r.stdout and "BROKEN" in r.stdout
