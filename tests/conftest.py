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


@pytest.fixture(scope="session")
def small_traces(tmp_path_factory) -> Path:
    """A small generated data set shared by model, serving and eval tests."""
    from data_gen.cli import add_arguments, run
    import argparse

    out = tmp_path_factory.mktemp("traces")
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--out", str(out), "--actors", "160", "--days", "1", "--seed", "3", "--no-progress"])) == 0
    return out
