"""A short end-to-end evaluation produces every output file, with a leave-one-family-out row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from moat.evals.cli import add_arguments, run


def test_end_to_end_evaluation(tiny_traces: Path, tmp_path: Path, capsys) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "eval"
    args = p.parse_args([
        "--traces", str(tiny_traces / "test.jsonl"), "--out", str(out), "--baselines", "all",
        "--leave-one-family-out", "--lofo-families", "self_instruct",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress",
    ])
    assert run(args) == 0
    assert "estimated cost multiplier (open-loop attacker)" in capsys.readouterr().out
    for name in ("report.md", "metrics.json", "roc.png", "detection_delay.png", "risk_over_time.png", "benign_actions.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"moat", "rate_limit", "prada", "seat", "per_request_gbm", "session_gbm"}
    moat = metrics["methods"]["moat"]
    assert 0.0 <= moat["auroc"] <= 1.0 and moat["per_persona"] and moat["per_family"]
    assert "self_instruct" in metrics["leave_one_family_out"]
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "## Leave-one-family-out" in report
    assert "est. cost multiplier (open-loop)" in report and "an estimate against an open-loop attacker" in report

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("moat-eval")
    runs = client.search_runs([exp.experiment_id])
    assert runs and "moat.auroc" in runs[0].data.metrics
    # Artifacts live beside the tracking database, never in ./mlruns of the working directory.
    assert runs[0].info.artifact_uri.startswith(tmp_path.resolve().as_uri())


@pytest.mark.parametrize(("argv", "error"), [
    (["--baselines", "prada,nope"], "--baselines: unknown baseline 'nope'; valid: all, none, rate_limit, prada, seat, per_request_gbm, session_gbm"),
    (["--leave-one-family-out", "--lofo-families", "nope"], "--lofo-families: unknown attack family 'nope'; valid: active_learning, coverage_sweep"),
    (["--model", "{tmp}/no-bundle"], "--model {tmp}/no-bundle: no such bundle directory"),
], ids=["baseline", "lofo-family", "model"])
def test_bad_argument_is_a_one_line_error_before_any_work(tmp_path: Path, capsys, argv: list[str], error: str) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    trace = tmp_path / "test.jsonl"
    trace.write_text("", encoding="utf-8")
    out = tmp_path / "eval"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run(p.parse_args(["--traces", str(trace), "--out", str(out), *argv])) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("moat evaluate: error: " + error.replace("{tmp}", str(tmp_path)))
    assert not out.exists()
