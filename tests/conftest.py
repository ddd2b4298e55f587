"""Session settings and fixtures shared by every test.

The repository owns its interface (contract/), so a bare clone runs everything except the tests
marked `shared_data` or `shared_contract`. Those read ../shared, which sits beside the repository
on the team's machines: they run when it is there, fail when it is missing under CI (CI=true,
which CI sets itself), and otherwise skip with one line naming the missing folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contract"
SHARED = ROOT.parent / "shared"
SHARED_CONTRACT = SHARED / "contract"
SHARED_DATA = SHARED / "data"
# marker -> the folder beside the repository that the marked tests read
SHARED_MARKERS = {"shared_data": SHARED_DATA, "shared_contract": SHARED_CONTRACT}
_HOME = pytest.StashKey[Path]()  # the session's private MOAT_HOME and BENTOML_HOME


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1"}


def missing_shared(item: pytest.Item) -> str | None:
    """Why `item` cannot run here, or None."""
    for marker, folder in SHARED_MARKERS.items():
        if item.get_closest_marker(marker) is not None and not folder.is_dir():
            return f"{folder} is missing (the shared folder beside the repository)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    for marker, folder in SHARED_MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: reads {folder}; skipped where it is missing, required under CI=true")
    # The registry's SQLite default ($MOAT_HOME/mlflow.db) and the BentoML store (~/bentoml) live in
    # the user's home: a test run gets its own, and a developer's MLFLOW_TRACKING_URI cannot send
    # test runs into a real registry. Set before any test module imports moat.models.bundle_source,
    # which reads MOAT_HOME at import.
    home = Path(tempfile.mkdtemp(prefix="moat-tests-"))
    config.stash[_HOME] = home
    os.environ["MOAT_HOME"] = str(home / "moat")
    os.environ["BENTOML_HOME"] = str(home / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME in config.stash:
        shutil.rmtree(config.stash[_HOME], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A skip marker, not pytest.skip() at setup, so that the skip line names the test.
    if in_ci():
        return
    for item in items:
        if (why := missing_shared(item)) is not None:
            item.add_marker(pytest.mark.skip(reason=why))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if (why := missing_shared(item)) is not None:
        pytest.fail(f"{why}; CI=true requires it", pytrace=False)


@pytest.fixture(scope="session")
def event_schema() -> dict:
    return json.loads((CONTRACT / "event.schema.json").read_text())


@pytest.fixture(scope="session")
def score_schema() -> dict:
    return json.loads((CONTRACT / "score.schema.json").read_text())


def generate(out: Path, actors: int, days: float, seed: int) -> Path:
    import argparse

    from moat.data_gen.cli import add_arguments, run

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--out", str(out), "--actors", str(actors), "--days", str(days), "--seed", str(seed), "--no-progress"])) == 0
    return out


@pytest.fixture(scope="session")
def small_traces(tmp_path_factory) -> Path:
    """A small generated data set shared by model, serving and eval tests."""
    return generate(tmp_path_factory.mktemp("traces"), 160, 1, 3)


@pytest.fixture(scope="session")
def tiny_traces(tmp_path_factory) -> Path:
    """A very small data set for training runs in tests."""
    return generate(tmp_path_factory.mktemp("tiny"), 80, 0.5, 9)


@pytest.fixture(scope="session")
def trained(tiny_traces: Path, tmp_path_factory):
    """One quick training run: (TrainResult, tracking URI)."""
    from moat.training.config import TrainConfig
    from moat.training.trainer import train

    tmp = tmp_path_factory.mktemp("run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = TrainConfig.load(None, quick=True).model_copy(update={"windows_per_epoch": 256, "max_epochs": 2})
    return train(tiny_traces, tmp / "bundle", cfg, uri=uri, progress=False), uri
