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


def _data(families: list[str], labels: list[int], per_account: int):
    """Hand-built evaluation data: `per_account` requests for each account, in account order."""
    import numpy as np

    from moat.evals.data import EvalData

    n = len(families) * per_account
    return EvalData(
        np.repeat(np.array(labels, dtype=np.uint8), per_account), [f"a{i}" for i in range(len(families)) for _ in range(per_account)],
        [f for f in families for _ in range(per_account)], np.arange(n) * 10.0, np.zeros(n, np.uint64),
        np.zeros((n, 4), np.float32), np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32),
    )  # fmt: skip


# (case, per attack account the request it is first acted on at, None: never; median, p90, detected)
DELAYS = [
    ("every account detected", [0, 2, 4], 2.0, 4.0, 3),
    ("one of three detected, at once", [0, None, None], float("inf"), float("inf"), 1),
    ("two of three detected", [1, 3, None], 3.0, float("inf"), 2),
]


@pytest.mark.parametrize("case, first, median, p90, detected", DELAYS, ids=[c[0] for c in DELAYS])
def test_queries_to_detection_count_accounts_never_detected(case: str, first: list, median: float, p90: float, detected: int) -> None:
    """A method that acts on one attack account in a hundred, at its first request, must not
    report a median of 0."""
    import numpy as np

    from moat.evals.cost import CostModel
    from moat.evals.evaluate import Accounts, MethodRun, method_metrics

    data = _data(["x"] * len(first) + ["ben"], [1] * len(first) + [0], 10)
    levels = np.zeros(len(data), np.int8)
    for a, f in enumerate(first):
        if f is not None:
            levels[a * 10 + f] = 1
    q = method_metrics(MethodRun("moat", levels.astype(float), levels), Accounts.build(data), data, CostModel())["queries_to_detection"]
    assert (q["median"], q["p90"], q["detected_accounts"], q["attack_accounts"]) == (median, p90, detected, len(first))


# (case, benign personas with their acted-on shares, the target's words, met)
HARD = [
    ("the simulator's hard negatives", {"prompt_developer": 0.01, "chat_user": 0.5}, "every hard-negative persona", True),
    ("another generator's names: every benign persona counts", {"dev-iteration": 0.033, "chat": 0.0}, "every benign persona", False),
]


@pytest.mark.parametrize("case, personas, words, met", HARD, ids=[c[0] for c in HARD])
def test_the_persona_target_holds_every_persona_a_trace_names(case: str, personas: dict, words: str, met: bool) -> None:
    from moat.evals.report import targets

    moat = {"auroc": 0.99, "tpr_at_1pct_fpr": 0.95, "benign_ever_blocked": 0.0, "queries_to_detection": {"median": 1.0}, "per_persona": {p: {"throttled": v} for p, v in personas.items()}}
    name, ok, _ = targets({"methods": {"moat": moat}})[3]
    assert name.startswith(words) and ok == met


def test_an_unlabelled_trace_is_refused_before_the_replay(tiny_traces: Path, tmp_path: Path, capsys) -> None:
    """Read as benign, it evaluated to "no attack accounts" without a word."""
    trace = tmp_path / "test.jsonl"
    lines = (tiny_traces / "test.jsonl").read_text().splitlines()[:200]
    trace.write_text("\n".join(json.dumps({k: v for k, v in json.loads(x).items() if k not in ("label", "family", "actor")}) for x in lines) + "\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--traces", str(trace), "--out", str(tmp_path / "eval"), "--baselines", "none", "--no-progress"])) == 2
    assert "200 of 200 events have no `label`" in capsys.readouterr().err


def test_evaluation_enforces_whatever_moat_mode_says(tiny_traces: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In shadow mode every action reads allow: nothing would ever be acted on."""
    from moat.evals.evaluate import moat_run

    trace = tiny_traces / "test.jsonl"
    enforced = moat_run(trace, None, progress=False)
    monkeypatch.setenv("MOAT_MODE", "shadow")
    assert (enforced.levels > 0).any()
    assert (moat_run(trace, None, progress=False).levels == enforced.levels).all()
