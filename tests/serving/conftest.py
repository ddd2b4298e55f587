"""Fixtures for serving tests: a real redis-server and a real `bentoml serve` process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.serving.fake_upstream import Seen, build_upstream, free_port, serve_app


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server started from the real binary. CI installs it; if it is missing the
    test fails rather than skips, so a green run always means Redis was exercised."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does this)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield url
    proc.terminate()
    proc.wait(5)


def wait_ready(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 90) -> None:
    """Wait until a started service answers /readyz; fail with its stderr if it exits."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{what} did not become ready")


def start_service(env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moat.serving.serve_cli", "moat.serving.service:MoatService", "--port", str(port), "--host", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "bentoml serve")
    return proc, url


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    proc, url = start_service()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Seen]]:
    """A small OpenAI-compatible fake upstream (tests/serving/fake_upstream.py) and what it saw."""
    seen = Seen()
    with serve_app(build_upstream(seen)) as url:
        yield url, seen
