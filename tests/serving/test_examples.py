"""The README's examples run as written against a live service: its curl commands (and those of
docs/), examples/client.py, and the Python gateway snippet from a directory outside the repo.
Only the service address is swapped for the test service's."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from moat.serving.fail_open import MOAT_ERROR
from tests.conftest import ROOT
from tests.docs.markdown import MARKDOWN, README, fenced, shell_lines
from tests.serving.conftest import free_port

README_ADDRESS = "localhost:3000"
EXAMPLES = ROOT / "examples"
CURL_LINES = [(source, line) for path in MARKDOWN for source, line in shell_lines(path) if line.startswith("curl ")]


def load(name: str) -> object:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def route(line: str) -> str:
    url = next(a for a in shlex.split(line) if a.startswith(README_ADDRESS))
    return urlsplit(f"http://{url}").path


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def assert_scored(score: dict, request_id: str, score_schema: dict) -> None:
    jsonschema.validate(score, score_schema)
    assert score["request_id"] == request_id
    assert MOAT_ERROR not in score["reasons"], "the service failed open instead of scoring"


@pytest.mark.parametrize("source, line", CURL_LINES, ids=[s for s, _ in CURL_LINES])
def test_curl_command_runs(source: str, line: str, service_url: str, score_schema: dict) -> None:
    assert README_ADDRESS in line, f"{source}: examples address the service as {README_ADDRESS}"
    done = run(["bash", "-o", "pipefail", "-c", line.replace(README_ADDRESS, urlsplit(service_url).netloc)], ROOT)
    assert done.returncode == 0, f"{source}: exit {done.returncode}: {done.stderr[-500:]}"
    path = route(line)
    if path == "/score":
        assert_scored(json.loads(done.stdout), load("event.json")["request_id"], score_schema)
    elif path == "/score/batch":
        scores, events = json.loads(done.stdout), load("events.json")
        assert isinstance(scores, list) and len(scores) == len(events)
        for score, event in zip(scores, events):
            assert_scored(score, event["request_id"], score_schema)
    elif path == "/metrics":
        assert "moat_requests_total" in done.stdout
    else:
        assert httpx.get(f"{service_url}{path}", timeout=5).status_code == 200


def test_client_script_scores_the_example_event(service_url: str, score_schema: dict) -> None:
    done = run([sys.executable, "examples/client.py", service_url], ROOT)
    assert done.returncode == 0, done.stderr
    assert_scored(json.loads(done.stdout), load("event.json")["request_id"], score_schema)


def test_client_script_fails_when_moat_does_not_answer() -> None:
    done = run([sys.executable, "examples/client.py", f"http://127.0.0.1:{free_port()}", "--timeout-s", "0.5"], ROOT)
    assert done.returncode == 1
    assert "gave no score (unreachable" in done.stderr and "the client failed open" in done.stderr


def test_readme_python_snippet_runs_outside_the_repo(service_url: str, tmp_path: Path) -> None:
    [(_, block)] = fenced(README, ("python",))
    assert f"http://{README_ADDRESS}" in block
    script = tmp_path / "gateway.py"
    script.write_text(block.replace(f"http://{README_ADDRESS}", service_url), encoding="utf-8")
    # The client's 50 ms default is a gateway's budget on a warm connection; this cold one-shot
    # process on a shared test machine gets more, so the test checks the call, not the latency.
    done = run([sys.executable, str(script)], tmp_path, {"MOAT_CLIENT_TIMEOUT_S": "5"})
    assert done.returncode == 0, done.stderr
    action, _risk, *_reasons, degraded = done.stdout.split()
    assert action in {"allow", "throttle", "perturb", "block"}
    assert degraded == "False", "the client fell back instead of reaching the service"
