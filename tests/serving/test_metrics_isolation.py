"""Two `moat serve` processes on one host (one BENTOML_HOME) keep their own Prometheus counters.
With BentoML's shared multiprocess folder, the second service to start wiped the first one's
files and each /metrics then summed both services' counters."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CONTRACT
from tests.serving.conftest import free_port, wait_ready

EXAMPLE = [json.loads(line) for line in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]


def moat_serve(cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "moat.cli", "serve", "--port", str(port), "--host", "127.0.0.1"], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "moat serve")
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture(scope="module")
def two_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp_path = tmp_path_factory.mktemp("serve")
    first = moat_serve(tmp_path)
    try:
        second = moat_serve(tmp_path)
    except BaseException:
        stop(first[0])
        raise
    yield first[1], second[1]
    stop(second[0])
    stop(first[0])


def scored(url: str) -> float:
    """moat_requests, summed over actions, from the service's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = re.findall(r"^moat_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert values, "moat_requests is not exported"
    return sum(float(v) for v in values)


@pytest.mark.parametrize("calls", [(3, 0), (2, 5)], ids=["one busy, one idle", "both busy"])
def test_side_by_side_services_count_alone(two_services: tuple[str, str], calls: tuple[int, int]) -> None:
    urls = two_services
    before = [scored(u) for u in urls]
    for url, n in zip(urls, calls):
        for i in range(n):
            assert httpx.post(url + "/score", json={**EXAMPLE[0], "request_id": f"m{i}"}, timeout=30).status_code == 200
    assert [scored(u) - b for u, b in zip(urls, before)] == list(calls)
