"""`moat replay --workers N` writes what one process writes, byte for byte, on traces whose
cross-account state matters: address blocks shared by accounts, a campaign template sent from
many accounts, a key used by two accounts, holds on shared scopes, and invalid lines in between."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.traces import dumps, iter_lines
from moat.serving.replay_cli import replay
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import ROOT, SHARED_DATA

GOLDEN = ROOT / "tests" / "data" / "golden_trace.jsonl"
DEV_SPREAD = SHARED_DATA / "external" / "dev-spread.jsonl.gz"


def shared_state_trace(path: Path) -> Path:
    """Accounts behind two shared /24s; a sybil campaign (one template, many accounts); a key
    shared by two accounts; a logit-bias prober that gets held; an invalid line now and then."""
    lines = []
    for i in range(900):
        account = f"acct-{i % 37}"
        event = {
            "request_id": f"r{i}",
            "ts": 1_700_000_000 + 2.5 * i + (i % 7) * 0.3,
            "account_id": account,
            "api_key_id": "shared-key" if i % 37 in (3, 4) else f"key-{account}-{i % 2}",
            "client_ip": f"203.0.113.{i % 5}" if i % 3 else f"198.51.100.{(i * 7) % 11}",
            "user_agent": "python-requests/2.31" if i % 2 else "OpenAI/Python 1.40",
        }
        if i % 37 < 12:  # the campaign: one template, the topic varies
            event["messages"] = [{"role": "user", "content": f"Write a detailed answer about topic {i % 50} with examples"}]
        elif i % 37 == 20:  # one prompt, ever-different logit biases
            event["prompt"] = "The answer is"
            event["params"] = {"max_tokens": 1, "logit_bias": {str(i): 100, str(i + 1): -100}, "logprobs": True, "top_logprobs": 5}
        else:
            event["messages"] = [{"role": "system", "content": "You help."}, {"role": "user", "content": f"question {i} about {account} and day {i // 100}"}]
            event["params"] = {"temperature": 0.7}
        lines.append(json.dumps(event))
        if i % 211 == 5:
            lines.append('{"request_id": "bad", "ts": "soon"}')
    path.write_text("\n".join(lines) + "\n")
    return path


def replay_output(trace: Path, workers: int, limit: int | None = None) -> str:
    out: list[str] = []
    replay(Scorer(ServingSettings(state="memory")), itertools.islice(iter_lines(trace), limit), lambda score: out.append(dumps(score) + "\n"), workers=workers)
    return "".join(out)


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServingSettings.model_fields:
        monkeypatch.delenv(f"MOAT_{name.upper()}", raising=False)


def test_the_synthetic_trace_shares_state_across_accounts(tmp_path: Path) -> None:
    """Guards the next test: its trace must hold what partitioning by account would get wrong."""
    trace = shared_state_trace(tmp_path / "t.jsonl")
    featurizer = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    campaigns, block_accounts, key_accounts = [], {}, {}
    for e in (Event.model_validate_json(line) for line in iter_lines(trace) if '"bad"' not in line):
        step = featurizer.step(e)
        campaigns.append(step.crowd.campaign)
        block_accounts.setdefault(step.summary.ip_prefix, set()).add(e.account_id)
        key_accounts.setdefault(e.api_key_id, set()).add(e.account_id)
    assert max(campaigns) >= 10
    assert max(len(a) for a in block_accounts.values()) >= 10
    assert len(key_accounts["shared-key"]) == 2
    scores = [json.loads(line) for line in replay_output(trace, 1).splitlines()]
    assert {"invalid_event"} <= {r for s in scores for r in s["reasons"]}
    assert {s["action"] for s in scores} >= {"allow", "perturb"}, "some scope must be held"


# (case, trace maker, workers, lines read: None for all)
CASES = [
    ("golden trace, 2 workers", lambda tmp: GOLDEN, 2, None),
    ("shared blocks, campaign and key, 2 workers", lambda tmp: shared_state_trace(tmp / "t.jsonl"), 2, None),
    ("shared blocks, campaign and key, 3 workers", lambda tmp: shared_state_trace(tmp / "t.jsonl"), 3, None),
]


@pytest.mark.parametrize("case, make, workers, limit", CASES, ids=[c[0] for c in CASES])
def test_workers_write_what_one_process_writes(tmp_path: Path, case: str, make, workers: int, limit: int | None) -> None:
    trace = make(tmp_path)
    one = replay_output(trace, 1, limit)
    assert one, case
    assert replay_output(trace, workers, limit) == one, f"{case}: --workers {workers} differs from one process"


@pytest.mark.shared_data
def test_workers_on_realistic_traffic(tmp_path: Path) -> None:
    """The first 4,000 events of dev-spread: real address spread, carrier NAT, cloud blocks."""
    head = tmp_path / "head.jsonl.gz"
    with gzip.open(head, "wt", encoding="utf-8") as fh:
        fh.writelines(itertools.islice(iter_lines(DEV_SPREAD), 4000))
    assert replay_output(head, 2) == replay_output(head, 1)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_count(tmp_path: Path, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "moat", "replay", str(GOLDEN), "-o", str(tmp_path / "s.jsonl"), "--workers", value], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert f"--workers: expected a whole number of at least 1, got '{value}'" in proc.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_workers_refuse_to_outgrow_the_scope_bound(tmp_path: Path) -> None:
    """Where one process would start evicting scopes, workers stop with an error naming the
    bound (not a traceback), and the run ends."""
    trace = shared_state_trace(tmp_path / "t.jsonl")
    env = {**os.environ, "MOAT_MAX_SCOPES": "20"}
    proc = subprocess.run([sys.executable, "-m", "moat", "replay", str(trace), "-o", str(tmp_path / "s.jsonl"), "--workers", "2", "--no-progress"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "moat replay: error: more than MOAT_MAX_SCOPES=20 scopes" in proc.stderr
    assert "Traceback" not in proc.stderr


# Chunks well above the default, where a request and a reply both outgrow the pipes' buffers (a
# coordinator that sent from its own thread stalled there at 512 events of dev-spread).
@pytest.mark.shared_data
@pytest.mark.parametrize("chunk", ["1024", "4096"])
def test_workers_take_large_chunks(tmp_path: Path, chunk: str) -> None:
    trace = tmp_path / "slice.jsonl"
    with trace.open("w") as fh:
        fh.writelines(itertools.islice(iter_lines(DEV_SPREAD), 6000))
    env = {**os.environ, "MOAT_REPLAY_CHUNK": chunk}
    outs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"s{workers}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "moat", "replay", str(trace), "-o", str(out), "--workers", workers, "--no-progress"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[workers] = out.read_bytes()
    assert outs["2"] == outs["1"]
