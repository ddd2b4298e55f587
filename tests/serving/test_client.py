"""The gateway client: parses scores, fails open (default) or closed, raises on invalid events."""

from __future__ import annotations

import json

import httpx
import pytest

from moat.serving.client import FAIL_CLOSED, FAIL_OPEN, AsyncMoatClient, InvalidEvent, MoatClient
from tests.conftest import CONTRACT

EVENT = json.loads((CONTRACT / "example_trace.jsonl").read_text().splitlines()[0])
OK = {"request_id": "r1", "risk": 0.7, "action": "throttle", "reasons": ["machine_timing", "scope:account"], "model_version": "m"}


def transport(status: int = 200, body: dict | None = None, exc: Exception | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if exc is not None:
            raise exc
        return httpx.Response(status, json=body if body is not None else OK)

    return httpx.MockTransport(handler)


# (case, transport, fail_open, expected action, degraded, counter that must grow)
CASES = [
    ("answer passes through", transport(), True, "throttle", False, None),
    ("timeout fails open", transport(exc=httpx.ReadTimeout("slow")), True, "allow", True, FAIL_OPEN),
    ("refused fails open", transport(exc=httpx.ConnectError("down")), True, "allow", True, FAIL_OPEN),
    ("5xx fails open", transport(503, {"error": "x"}), True, "allow", True, FAIL_OPEN),
    ("service fault body fails open", transport(200, {"error": "internal", "risk": 0.0, "action": "allow", "reasons": ["moat_error"]}), True, "allow", True, FAIL_OPEN),
    ("timeout fails closed", transport(exc=httpx.ReadTimeout("slow")), False, "block", True, FAIL_CLOSED),
]


def counter(c) -> float:
    return c._value.get()


@pytest.mark.parametrize("case, tr, fail_open, action, degraded, metric", CASES, ids=[c[0] for c in CASES])
def test_sync_client(case, tr, fail_open, action, degraded, metric) -> None:
    before = counter(metric) if metric else 0
    with MoatClient(transport=tr, fail_open=fail_open) as client:
        s = client.score(EVENT)
    assert (s.action, s.degraded) == (action, degraded)
    if metric:
        assert counter(metric) == before + 1


@pytest.mark.parametrize("case, tr, fail_open, action, degraded, metric", CASES, ids=[c[0] for c in CASES])
async def test_async_client(case, tr, fail_open, action, degraded, metric) -> None:
    async_tr = httpx.MockTransport(tr.handler)
    async with AsyncMoatClient(transport=async_tr, fail_open=fail_open) as client:
        s = await client.score(EVENT)
    assert (s.action, s.degraded) == (action, degraded)


def test_invalid_event_raises() -> None:
    with MoatClient(transport=transport(422, {"error": "invalid event: ts: Input should be a valid number", "field": "ts"})) as client:
        with pytest.raises(InvalidEvent, match="ts"):
            client.score({**EVENT, "ts": "x"})


def test_default_timeout_is_50ms() -> None:
    assert MoatClient().settings.timeout_s == 0.05


def test_client_against_the_real_service(service_url: str) -> None:
    with MoatClient(url=service_url, timeout_s=5.0) as client:
        s = client.score(EVENT)
    assert s.request_id == "r1" and not s.degraded and 0 <= s.risk <= 1
