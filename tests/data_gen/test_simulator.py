"""The generate command: determinism, split hygiene, stats, overlap of benign and attack fields."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from moat.data_gen.cli import add_arguments, run
from moat.data_gen.registry import attacks
from moat.data_gen.simulator import min_actors
from moat.models.traces import iter_raw


def generate(out: Path, *extra: str) -> int:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return run(p.parse_args(["--out", str(out), "--actors", "90", "--days", "1", "--no-progress", *extra]))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("extra", [("--seed", "5"), ("--seed", "5", "--gzip")])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, extra: tuple[str, ...]) -> None:
    assert generate(tmp_path / "a", *extra) == 0
    assert generate(tmp_path / "b", *extra) == 0
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_different_seeds_differ(tmp_path: Path) -> None:
    generate(tmp_path / "a", "--seed", "1")
    generate(tmp_path / "b", "--seed", "2")
    assert digest(tmp_path / "a")["train.jsonl"] != digest(tmp_path / "b")["train.jsonl"]


def test_splits_are_by_actor_and_holdout_is_test_only(tmp_path: Path) -> None:
    assert generate(tmp_path, "--seed", "4", "--holdout-families", "logit_probe,coverage_sweep") == 0
    actors, accounts = {}, {}
    for split in ("train", "val", "test"):
        events = list(iter_raw(tmp_path / f"{split}.jsonl"))
        assert events
        assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
        actors[split] = {e["actor"] for e in events}
        accounts[split] = {e["account_id"] for e in events}
        fams = {e["family"] for e in events}
        if split != "test":
            assert not fams & {"logit_probe", "coverage_sweep"}
        else:
            assert {"logit_probe", "coverage_sweep"} <= fams
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not actors[a] & actors[b]
        assert not accounts[a] & accounts[b]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["train"]["events"] == sum(1 for _ in iter_raw(tmp_path / "train.jsonl"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--holdout-families", "nope"), "valid: active_learning"),
        (("--actors", "0"), "--actors"),
        (("--days", "-1"), "--days"),
        (("--corpus", "/nonexistent.jsonl"), "no such file"),
    ],
)
def test_bad_options_get_one_line_errors(tmp_path: Path, capsys, extra: tuple[str, ...], message: str) -> None:
    assert generate(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--actors", "3"), f"--actors must be at least {min_actors()}"),
        (("--actors", str(min_actors() - 1)), f"--actors must be at least {min_actors()}"),
        # Enough actors, but every one of them is a held-out attacker: nothing is left for train.
        (("--actors", "60", "--attack-share", "1", "--holdout-families", ",".join(attacks())), "the train split got no events (0 of 60 actors"),
    ],
)
def test_too_few_actors_for_every_split_is_refused_and_writes_no_trace(tmp_path: Path, capsys, extra: tuple[str, ...], message: str) -> None:
    assert generate(tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not list(tmp_path.glob("**/*.jsonl")), "a refused run must not leave traces behind"


def test_the_minimum_number_of_actors_fills_every_split(tmp_path: Path) -> None:
    assert generate(tmp_path, "--actors", str(min_actors()), "--seed", "0") == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert all(stats[split]["events"] > 0 for split in ("train", "val", "test"))


def test_every_option_has_help_text() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert [a.dest for a in p._actions if not a.help] == []


@pytest.mark.shared_data
def test_corpus_and_timing_files_are_used(tmp_path: Path) -> None:
    from tests.conftest import SHARED_DATA

    corpus = SHARED_DATA / "mt_bench_question.jsonl"
    first_turn = json.loads(corpus.read_text().splitlines()[0])["turns"][0]
    assert generate(tmp_path, "--seed", "1", "--corpus", str(corpus), "--timing-from", str(SHARED_DATA / "servegen_m-small")) == 0
    texts = {m["content"] for e in iter_raw(tmp_path / "train.jsonl") for m in e.get("messages", [])} | {e.get("prompt") for e in iter_raw(tmp_path / "train.jsonl")}
    corpus_texts = {t for line in corpus.read_text().splitlines() for t in json.loads(line)["turns"]}
    assert texts & corpus_texts, f"no corpus prompt (e.g. {first_turn[:40]!r}) reached the trace"


def test_no_single_field_separates_benign_from_attack(small_traces: Path) -> None:
    """Per-request AUC of each parameter field stays away from perfect separation."""
    from sklearn.metrics import roc_auc_score

    events = list(iter_raw(small_traces / "train.jsonl"))
    labels = [e["label"] for e in events]
    fields = {
        "temperature": lambda e: e["params"].get("temperature", -1),
        "max_tokens": lambda e: e["params"].get("max_tokens", -1),
        "logprobs": lambda e: int(bool(e["params"].get("logprobs"))),
        "top_logprobs": lambda e: e["params"].get("top_logprobs", -1),
        "logit_bias_size": lambda e: len(e["params"].get("logit_bias", {})),
        "n": lambda e: e["params"].get("n", 1),
        "prompt_chars": lambda e: len(e.get("prompt") or e["messages"][-1]["content"]),
        "turns": lambda e: len(e.get("messages") or []),
        "stream": lambda e: int(bool(e["params"].get("stream"))),
        "seed": lambda e: int("seed" in e["params"]),
        "top_p": lambda e: e["params"].get("top_p", -1),
        "stop": lambda e: int("stop" in e["params"]),
        "logit_bias_max": lambda e: max([abs(v) for v in e["params"].get("logit_bias", {}).values()] or [0]),
        "system_prompt": lambda e: int(bool(e.get("messages")) and e["messages"][0]["role"] == "system"),
        "completions_endpoint": lambda e: int("prompt" in e),
        "browser_user_agent": lambda e: int("Mozilla" in (e.get("user_agent") or "")),
        "no_user_agent": lambda e: int(e.get("user_agent") is None),
        "ipv6": lambda e: int(":" in e["client_ip"]),
    }
    for name, f in fields.items():
        auc = roc_auc_score(labels, [f(e) for e in events])
        assert 0.1 < auc < 0.9, f"{name} alone separates the classes (AUC {auc:.2f})"
