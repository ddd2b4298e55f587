from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT.parent / "shared" / "contract"
SHARED_DATA = ROOT.parent / "shared" / "data"


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
