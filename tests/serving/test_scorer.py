"""The Scorer: hysteresis, shadow mode, bounded state, batching equals one-at-a-time, and
serving never imports the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.events import Event
from models.traces import iter_raw
from serving.replay_cli import replay
from serving.scorer import Scorer
from serving.settings import ServingSettings
from serving.state.memory import MemoryStore
from tests.conftest import CONTRACT, ROOT


def ev(i: int, ts: float, account: str = "acct-1", **extra) -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": ts, "account_id": account, "prompt": f"hello {i}", **extra})


def test_hold_outlasts_low_risk_until_cooldown() -> None:
    store = MemoryStore()
    strict = Scorer(ServingSettings(throttle_threshold=0.0, perturb_threshold=0.0, block_threshold=1.0001, cooldown_s=100), store=store)
    first = strict.score(ev(0, 1000.0))
    assert first.action == "perturb"
    lenient = Scorer(ServingSettings(throttle_threshold=1.0, perturb_threshold=1.0, block_threshold=1.0001, cooldown_s=100), store=store)
    assert lenient.score(ev(1, 1050.0)).action == "perturb"  # held: inside the cool-down
    assert lenient.score(ev(2, 1200.0)).action == "allow"  # the hold has expired


def test_shadow_mode_reports_but_allows() -> None:
    sc = Scorer(ServingSettings(mode="shadow", throttle_threshold=0.0, perturb_threshold=0.0, block_threshold=0.0))
    s = sc.score(ev(0, 1.0))
    assert s.action == "allow" and s.shadow_action == "block"
    assert s.reasons and s.reasons[-1].startswith("scope:")


@pytest.mark.parametrize("bound, accounts", [(10, 50), (100, 30)])
def test_memory_store_is_bounded(bound: int, accounts: int) -> None:
    store = MemoryStore(max_scopes=bound)
    sc = Scorer(ServingSettings(), store=store)
    for i in range(accounts):
        sc.score(ev(i, float(i), account=f"acct-{i}"))
    assert store.size() <= bound
    assert store.evictions == max(accounts - bound, 0)


def test_ttl_restarts_an_idle_scope() -> None:
    store = MemoryStore(ttl_s=60)
    sc = Scorer(ServingSettings(), store=store)
    sc.score(ev(0, 0.0))
    sc.score(ev(1, 10.0))
    totals = []
    store.update("account", "acct-1", 10.0, lambda st: totals.append(st.total))
    sc.score(ev(2, 500.0))  # idle past the TTL: a fresh history
    store.update("account", "acct-1", 500.0, lambda st: totals.append(st.total))
    assert totals == [2, 1]  # two requests, then after the idle gap only the new one


def test_batched_scoring_equals_one_at_a_time(small_traces: Path) -> None:
    events = [Event.model_validate(r) for _, r in zip(range(600), iter_raw(small_traces / "test.jsonl"))]
    one = Scorer(ServingSettings())
    singles = [one.score(e) for e in events]
    many = Scorer(ServingSettings())
    streamed = list(many.score_stream(events, chunk=64))
    assert [s.action for s in singles] == [s.action for s in streamed]
    assert max(abs(a.risk - b.risk) for a, b in zip(singles, streamed)) < 1e-5


def test_replay_writes_one_score_per_event_in_order(tmp_path: Path, score_schema: dict) -> None:
    import jsonschema

    lines = list(iter_raw(CONTRACT / "example_trace.jsonl"))
    bad = {"request_id": "bad-1", "ts": "not a time", "account_id": "x", "prompt": "p"}
    got: list[dict] = []
    n, invalid = replay(Scorer(ServingSettings()), [lines[0], bad, *lines[1:]], got.append)
    assert (n, invalid) == (5, 1)
    assert [g["request_id"] for g in got] == ["r1", "bad-1", "r2", "r3", "r4"]
    assert got[1]["reasons"] == ["invalid_event"]
    for g in got:
        jsonschema.validate(g, score_schema)


def test_serving_and_replay_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, serving.scorer, serving.service, serving.client, serving.state.redis_store\n"
        "from moat_cli import main\n"
        f"rc = main(['replay', r'{CONTRACT / 'example_trace.jsonl'}', '-o', r'{tmp_path / 's.jsonl'}', '--no-progress'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'pytorch_lightning', 'lightning', 'mlflow') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0 []"


def test_serve_extra_pulls_no_training_stack() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in extras["serve"] + core:
        assert not any(dep.lower().startswith(h) for h in ("torch", "transformers", "pytorch-lightning", "lightning", "mlflow")), dep


def test_replay_command_keeps_bad_lines_in_place(tmp_path: Path) -> None:
    from moat_cli import main

    lines = (CONTRACT / "example_trace.jsonl").read_text().splitlines()
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([lines[0], "{not json", '{"request_id": "bad-2", "ts": 1}', *lines[1:]]) + "\n")
    out = tmp_path / "s.jsonl"
    assert main(["replay", str(trace), "-o", str(out), "--no-progress"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["request_id"] for g in got] == ["r1", "line-2", "bad-2", "r2", "r3", "r4"]
    assert [g["reasons"] for g in got[1:3]] == [["invalid_event"], ["invalid_event"]]


def _probe(bias_tokens: int, n: int = 150) -> str | None:
    """A hand-written logit-bias probe (not from the simulator): one prompt, max_tokens=1,
    logprobs, a fresh logit_bias each request, about one request a second."""
    import random

    rng = random.Random(0)
    sc = Scorer(ServingSettings())
    t = 1764500042.0
    for i in range(n):
        t += rng.uniform(0.5, 1.5)
        bias = {str(rng.randint(0, 100_000)): 100 for _ in range(bias_tokens)}
        s = sc.score(Event.model_validate({
            "request_id": f"p{i}", "ts": t, "account_id": "acct_probe", "api_key_id": "key_1", "client_ip": "203.0.113.9",
            "endpoint": "/v1/completions", "prompt": "Translate to French: the invoice is overdue",
            "params": {"temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 5, "logit_bias": bias},
        }))
        if s.action != "allow":
            return s.action
    return None


@pytest.mark.parametrize(
    "bias_tokens",
    [
        20,
        pytest.param(1, marks=pytest.mark.xfail(strict=True, reason="known gap of the shipped model: a single-token probe peaks near risk 0.86, under the 0.963 throttle threshold")),
    ],
)
def test_shipped_model_acts_on_a_hand_written_logit_probe(bias_tokens: int) -> None:
    assert _probe(bias_tokens) is not None
