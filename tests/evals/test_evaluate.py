"""A short end-to-end evaluation produces every output file, with a leave-one-family-out row."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moat.evals.cli import add_arguments, run


def test_end_to_end_evaluation(tiny_traces: Path, tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "eval"
    args = p.parse_args([
        "--traces", str(tiny_traces / "test.jsonl"), "--out", str(out), "--baselines", "all",
        "--leave-one-family-out", "--lofo-families", "logit_probe",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress",
    ])
    assert run(args) == 0
    for name in ("report.md", "metrics.json", "roc.png", "detection_delay.png", "risk_over_time.png", "benign_actions.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"moat", "rate_limit", "prada", "seat", "per_request_gbm", "session_gbm"}
    moat = metrics["methods"]["moat"]
    assert 0.0 <= moat["auroc"] <= 1.0 and moat["per_persona"] and moat["per_family"]
    assert "logit_probe" in metrics["leave_one_family_out"]
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "## Leave-one-family-out" in report

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("moat-eval")
    runs = client.search_runs([exp.experiment_id])
    assert runs and "moat.auroc" in runs[0].data.metrics


def test_unknown_baseline_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--traces", "x.jsonl", "--out", str(tmp_path), "--baselines", "nope"])) == 2
    assert "valid: all, none, rate_limit" in capsys.readouterr().err
