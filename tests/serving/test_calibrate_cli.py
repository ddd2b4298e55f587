"""`moat calibrate`: thresholds from unlabelled operator traffic, as a new bundle version."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from moat.cli import main
from moat.models.bundle import DEFAULT_BUNDLE, load_bundle, sha256_file
from moat.models.bundle_source import resolve_registry_uri
from moat.models.traces import iter_raw

# With 5% of the accounts replaced by attackers, the action threshold moves by at most this
# much (measured on the simulator's test split with the shipped bundle: 0.000; before the
# population's own tail could keep its top account, a fenced-off benign account moved it 0.060).
MAX_THROTTLE_SHIFT = 0.03


def _subset(src: Path, out: Path, keep: set[str]) -> Path:
    with open(out, "w", encoding="utf-8") as fh:
        for e in iter_raw(src):
            if e["account_id"] in keep:
                e.pop("label", None), e.pop("family", None), e.pop("actor", None)  # operator traffic is unlabelled
                fh.write(json.dumps(e) + "\n")
    return out


@pytest.fixture(scope="module")
def populations(small_traces: Path, tmp_path_factory) -> tuple[Path, Path, int]:
    """The test split's benign accounts alone, and the same with 5% attacker accounts added."""
    tmp = tmp_path_factory.mktemp("calib")
    test = small_traces / "test.jsonl"
    labels = {e["account_id"]: e["label"] for e in iter_raw(test)}
    benign = {a for a, y in labels.items() if y == 0}
    attack = sorted(a for a, y in labels.items() if y == 1)
    k = max(1, round(0.05 * len(benign) / 0.95))
    mixed = benign | set(random.Random(0).sample(attack, k))
    return _subset(test, tmp / "benign.jsonl", benign), _subset(test, tmp / "mixed.jsonl", mixed), k


def _calibrate(tmp_path: Path, *traffic: Path, extra: tuple[str, ...] = ()) -> tuple[int, Path]:
    out = tmp_path / "bundle"
    rc = main(["calibrate", "--traffic", *map(str, traffic), "--out", str(out), "--no-progress", *extra])
    return rc, out


def test_calibrated_bundle_keeps_the_network_and_records_its_provenance(populations, tmp_path: Path, capsys) -> None:
    benign, _, _ = populations
    rc, out = _calibrate(tmp_path, benign)
    assert rc == 0
    meta, onnx = load_bundle(out)  # hash and spec checks pass
    base, base_onnx = load_bundle(DEFAULT_BUNDLE)
    assert sha256_file(onnx) == sha256_file(base_onnx)
    assert meta.model_version.startswith(base.model_version + "-cal") and meta.model_version != base.model_version
    prov = meta.provenance
    assert prov["base_model_version"] == base.model_version
    assert prov["traffic"][0]["file"] == "benign.jsonl" and len(prov["traffic"][0]["sha256"]) == 64
    assert prov["report"]["ever_acted_share"] <= 0.01 and prov["report"]["ever_blocked_share"] <= 0.001
    assert meta.thresholds.throttle <= meta.thresholds.perturb <= meta.thresholds.block
    assert "## Operator calibration" in (out / "card.md").read_text()
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["thresholds"] == meta.thresholds.model_dump()
    assert set(report["near_threshold"]) == {"throttle", "perturb", "block"}
    assert "warning" not in captured.err  # benign traffic: nothing for the operator to review


def test_a_few_percent_of_attackers_barely_move_the_thresholds(populations, tmp_path: Path) -> None:
    benign, mixed, n_attackers = populations
    assert n_attackers >= 1
    rc_a, a = _calibrate(tmp_path / "a", benign)
    rc_b, b = _calibrate(tmp_path / "b", mixed)
    assert rc_a == rc_b == 0
    ta, tb = load_bundle(a)[0].thresholds, load_bundle(b)[0].thresholds
    assert abs(tb.throttle - ta.throttle) <= MAX_THROTTLE_SHIFT
    assert tb.block >= ta.block - 1e-9  # attackers never make the benign population blocked more


def test_registers_the_bundle_when_a_tracking_uri_is_given(populations, tmp_path: Path, capsys) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caller = [os.environ.get(v) for v in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")]
    rc, out = _calibrate(tmp_path, populations[0], extra=("--tracking-uri", uri))
    assert rc == 0
    # The caller's own MLflow logging stays where it was: no tracking URI or experiment set under it.
    assert [os.environ.get(v) for v in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")] == caller
    assert load_bundle(resolve_registry_uri("models:/moat-risk/1", uri))[0].thresholds == load_bundle(out)[0].thresholds
    assert "registered as models:/moat-risk/1" in capsys.readouterr().err
    mv = MlflowClient(tracking_uri=uri).get_model_version("moat-risk", "1")
    assert mv.tags["calibrated_from"] == load_bundle(DEFAULT_BUNDLE)[0].model_version
    assert not (Path.cwd() / "mlruns").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--traffic", "/nonexistent.jsonl"], "--traffic /nonexistent.jsonl: no such file"),
        (["--block-share", "0.5"], "--block-share/--perturb-share/--action-share"),
        (["--fence", "0"], "--fence: must be a positive number of interquartile ranges"),
        (["--model", "/tmp/no-such-bundle"], "--model /tmp/no-such-bundle: no such bundle directory"),
    ],
)
def test_bad_arguments_fail_in_one_line(populations, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    base = ["calibrate", "--traffic", str(populations[0]), "--out", str(tmp_path / "out"), "--no-progress"]
    args = base + argv if argv[0] != "--traffic" else ["calibrate", *argv, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_bundle(populations, tmp_path: Path, capsys) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "meta.json").write_text("{}")
    rc, _ = _calibrate(tmp_path, populations[0])
    assert rc == 2 and "not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize(("bad", "rc", "message"), [(1, 0, "warning: 1 of 60 accounts have a non-finite risk"), (60, 2, "error: no account has a finite risk")])
def test_non_finite_risks_are_left_out_and_said(populations, tmp_path: Path, capsys, monkeypatch, bad: int, rc: int, message: str) -> None:
    """One NaN from a faulty network made every quantile NaN, trimmed every account and fell
    back to default thresholds without a word."""
    import math

    import moat.serving.calibrate_cli as cli

    risks = {f"a{i}": (math.nan if i < bad else 0.01 * (i % 50)) for i in range(60)}
    monkeypatch.setattr(cli, "account_own_risk", lambda *a, **k: (risks, [60]))
    got, out = _calibrate(tmp_path, populations[0])
    captured = capsys.readouterr()
    assert got == rc and message in captured.err
    if rc == 0:
        report = json.loads(captured.out)
        assert report["accounts"] == 60 - bad and report["trimmed"] == 0
        assert all(math.isfinite(t) for t in report["thresholds"].values())


def test_a_network_that_gives_only_nan_is_refused(populations, tmp_path: Path, capsys, monkeypatch) -> None:
    """Through the real replay, not a patched account_own_risk: max() with a NaN on one side kept
    the other, so a NaN never reached the check and the bundle was written."""
    import numpy as np

    import moat.serving.scorer as scorer

    monkeypatch.setattr(scorer, "calibrated_risk", lambda logits, t: np.full(len(logits), np.nan))
    rc, out = _calibrate(tmp_path, populations[0])
    assert rc == 2 and "error: no account has a finite risk" in capsys.readouterr().err
    assert not out.exists()


# (case, extra accounts far above a uniform benign population of 1,000, whether the blocked share
# is warned about): the fence trims them, so the thresholds leave them above block.
TAILS = [("no tail", 0, False), ("one account: within the target's rounding", 1, False), ("eight accounts: 0.8% blocked", 8, True)]


@pytest.mark.parametrize("case, tail, warned", TAILS, ids=[c[0] for c in TAILS])
def test_a_blocked_share_above_its_target_is_said(populations, tmp_path: Path, capsys, monkeypatch, case: str, tail: int, warned: bool) -> None:
    import moat.serving.calibrate_cli as cli

    risks = {f"b{i}": 0.0005 * i for i in range(1000)} | {f"t{i}": 0.999 for i in range(tail)}
    monkeypatch.setattr(cli, "account_own_risk", lambda *a, **k: (risks, [len(risks)]))
    rc, _ = _calibrate(tmp_path, populations[0])
    err = capsys.readouterr().err
    assert rc == 0
    assert ("warning: these thresholds would block" in err) == warned, err
