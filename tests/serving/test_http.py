"""The HTTP service, against a real `bentoml serve` process."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import jsonschema
import pytest

from moat.models.traces import iter_raw
from moat.serving.fail_open import MOAT_ERROR
from moat.serving.replay_cli import replay
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT
from tests.serving.conftest import start_service

EXAMPLE = [json.loads(line) for line in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]


def post(url: str, body, path: str = "/score", raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(url + path, json=body, timeout=30)


def internal_errors(url: str) -> float:
    """moat_errors{kind="internal"} from /metrics: scorer crashes that were answered allow."""
    found = re.findall(r'^moat_errors_total\{[^}]*kind="internal"[^}]*\} (\S+)$', httpx.get(url + "/metrics").text, re.MULTILINE)
    assert len(found) == 1, "moat_errors{kind=internal} is not exported"
    return float(found[0])


def assert_scored(url: str, answers: list[dict]) -> None:
    """Valid traffic was scored, not failed open: a crash must not pass as a 200 allow."""
    assert not [a for a in answers if MOAT_ERROR in a["reasons"]]
    assert internal_errors(url) == 0


def test_probes_and_metrics(service_url: str) -> None:
    assert httpx.get(service_url + "/livez").status_code == 200
    assert httpx.get(service_url + "/readyz").status_code == 200
    post(service_url, EXAMPLE[0])
    text = httpx.get(service_url + "/metrics").text
    for name in ("moat_requests", "moat_score_latency_seconds_bucket", "moat_score_calls_together_bucket", "moat_model_info", "moat_state_scopes", "moat_errors"):
        assert name in text, name


def test_score_and_batch_follow_the_contract(service_url: str, score_schema: dict) -> None:
    one = post(service_url, EXAMPLE[0])
    assert one.status_code == 200
    jsonschema.validate(one.json(), score_schema)
    many = post(service_url, EXAMPLE[1:], path="/score/batch")
    assert many.status_code == 200
    assert [s["request_id"] for s in many.json()] == ["r2", "r3", "r4"]
    for s in many.json():
        jsonschema.validate(s, score_schema)
    assert_scored(service_url, [one.json(), *many.json()])


BAD = [
    ("missing account", {"request_id": "x", "ts": 1, "prompt": "p"}, 422, "account_id"),
    ("temperature out of range", {**EXAMPLE[0], "params": {"temperature": 5}}, 422, "params.temperature"),
    ("bad role", {**EXAMPLE[0], "messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages.0.role"),
    ("no text", {"request_id": "x", "ts": 1, "account_id": "a"}, 422, "body"),
    ("ts not a number", {**EXAMPLE[0], "ts": "yesterday"}, 422, "ts"),
    ("10,000 messages", {**EXAMPLE[0], "messages": [{"role": "user", "content": "hi"}] * 10_000}, 422, "messages"),
    ("logit_bias out of range", {**EXAMPLE[2], "params": {"logit_bias": {"1": 1000}}}, 422, "params.logit_bias.1"),
    ("not an object", [1, 2, 3], 422, "body"),
    ("null", None, 422, "body"),
]


@pytest.mark.parametrize("case, body, status, field", BAD, ids=[b[0] for b in BAD])
def test_invalid_events_name_the_field(service_url: str, case: str, body, status: int, field: str) -> None:
    r = post(service_url, None, raw=json.dumps(body).encode())
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


@pytest.mark.parametrize(
    "case, raw, status",
    [
        ("not json", b"{nope", 400),
        ("over the size limit", b'{"prompt": "' + b"x" * (1 << 20) + b'"}', 413),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, 400),
        ("invalid utf-8", b'{"prompt": "\xff\xfe"}', 400),
        ("NaN", b'{"request_id": "x", "ts": NaN, "account_id": "a", "prompt": "p"}', 400),
        ("integer over 4,300 digits", b'{"request_id": "x", "ts": ' + b"9" * 5000 + b', "account_id": "a", "prompt": "p"}', 400),
        ("duplicate key", b'{"request_id": "x", "ts": 1, "account_id": "a", "account_id": "b", "prompt": "p"}', 400),
        # The key, named in the 400, cannot be encoded as UTF-8: the answer crashed into a fail-open allow.
        ("duplicate lone-surrogate key", b'{"a": 1, "\\ud800": 1, "\\ud800": 2}', 400),
        ("the same in a batch", b'[{"a": 1, "\\ud800": 1, "\\ud800": 2}]', 400),
        ("Infinity late in a batch", b'[{"request_id": "x", "ts": 1, "account_id": "a", "prompt": "p"}, {"request_id": "y", "ts": Infinity, "account_id": "a", "prompt": "p"}]', 400),
    ],
)
def test_bad_bodies(service_url: str, case: str, raw: bytes, status: int) -> None:
    path = "/score/batch" if raw.startswith(b"[{") else "/score"
    r = post(service_url, None, path=path, raw=raw)
    assert r.status_code == status, r.text
    assert "field" in r.json()


HOSTILE = [
    {**EXAMPLE[0], "messages": [{"role": "user", "content": "\ud800 lone surrogate"}]},
    {**EXAMPLE[0], "messages": [{"role": "user", "content": "\x00\x1b[2J control \u202e rtl"}]},
    {**EXAMPLE[0], "messages": [{"role": "user", "content": "🙂" * 100_000}]},
    {**EXAMPLE[0], "prompt": "y" * 900_000, "messages": None},
    {**EXAMPLE[0], "client_ip": "::ffff:999.1.1.1"},
    {**EXAMPLE[0], "ts": 1e308},
    {**EXAMPLE[0], "ts": -1e9},
    {**EXAMPLE[0], "params": {"n": 128, "max_tokens": 10**12, "seed": -(2**62), "stop": ["a"] * 16, "unknown": {"x": [1]}}},
    {**EXAMPLE[0], "params": {"logit_bias": {str(i): 100 for i in range(5000)}}},
    {**EXAMPLE[0], "extra_field": {"nested": [None, True]}, "label": 1},
    {**EXAMPLE[0], "account_id": "a" * 256, "request_id": "r" * 128},
    {**EXAMPLE[0], "user_agent": "\t" * 1024},
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_never_gets_a_5xx(service_url: str, body: dict) -> None:
    if body.get("messages") is None:
        body = {k: v for k, v in body.items() if k != "messages"}
    r = post(service_url, None, raw=json.dumps(body).encode())
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert 0.0 <= r.json()["risk"] <= 1.0
        assert_scored(service_url, [r.json()])


def test_invalid_event_changes_no_state_and_service_equals_replay(small_traces: Path) -> None:
    # A recorded trace is scored at its own times, by the service as by replay.
    proc, url = start_service({"MOAT_TIME_SOURCE": "caller"})
    try:
        trace = [e for _, e in zip(range(250), iter_raw(small_traces / "test.jsonl"))]
        served = []
        for i, e in enumerate(trace):
            if i % 50 == 0:  # an invalid copy first: it must leave no trace in state
                bad = {**e, "params": {"temperature": -1}}
                assert post(url, bad).status_code == 422
            r = post(url, e)
            assert r.status_code == 200
            served.append(r.json())
        assert_scored(url, served)
        replayed: list[dict] = []
        replay(Scorer(ServingSettings(time_source="caller")), trace, replayed.append)
        assert [s["action"] for s in served] == [s["action"] for s in replayed]
        assert max(abs(a["risk"] - b["risk"]) for a, b in zip(served, replayed)) < 1e-5
    finally:
        proc.terminate()
        proc.wait(10)


def raw_exchange(url: str, request: bytes) -> int:
    """Send bytes as they are (framing httpx would refuse to write); the status of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 "), head[:200]
    return int(head.split()[1])


BODY = json.dumps(EXAMPLE[0]).encode()
FRAMING = [
    # (case, raw request, status)
    ("Content-Length larger than the body", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY) + 100, BODY), 408),
    ("Content-Length with Transfer-Encoding", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), len(BODY), BODY), 400),
    ("chunked alone is fine", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY), 200),
]


@pytest.mark.parametrize("case, request_bytes, status", FRAMING, ids=[c[0] for c in FRAMING])
def test_framing(service_url: str, case: str, request_bytes: bytes, status: int) -> None:
    # A short body used to be held until BentoML's 10 s traffic timeout and answered 504.
    assert raw_exchange(service_url, request_bytes) == status


MEDIA_TYPES = [
    ("application/json", 200),
    ("application/json; charset=utf-8", 200),
    ("Application/JSON; charset=UTF-8", 200),
    ("application/json; charset=latin-1", 415),
    ("text/plain", 415),
    ("application/x-www-form-urlencoded", 415),
    ("", 415),
]


@pytest.mark.parametrize("content_type, status", MEDIA_TYPES)
def test_content_type(service_url: str, content_type: str, status: int) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path, body in (("/score", EXAMPLE[0]), ("/score/batch", EXAMPLE[1:])):
        r = httpx.post(service_url + path, content=json.dumps(body).encode(), headers=headers, timeout=30)
        assert r.status_code == status, r.text
        if status == 415:
            assert r.json()["field"] == "content-type"


def test_openapi_publishes_both_routes_with_contract_schemas(service_url: str, score_schema: dict, event_schema: dict) -> None:
    paths = httpx.get(service_url + "/docs.json", timeout=30).json()["paths"]
    one, many = paths["/score"]["post"], paths["/score/batch"]["post"]
    event = one["requestBody"]["content"]["application/json"]["schema"]
    score = one["responses"]["200"]["content"]["application/json"]["schema"]
    assert many["requestBody"]["content"]["application/json"]["schema"] == {"type": "array", "items": event}
    assert many["responses"]["200"]["content"]["application/json"]["schema"] == {"type": "array", "items": score}
    assert set(event["required"]) == set(event_schema["required"])
    assert set(event["properties"]) >= set(event_schema["properties"])
    assert set(score["required"]) >= set(score_schema["required"])
    assert "$ref" not in json.dumps(event) + json.dumps(score)  # self-contained, no dangling refs
    # What the schemas describe is what the service does: every example validates, and the
    # answers the service gives validate against the published answer schema.
    for e in EXAMPLE:
        jsonschema.validate(e, event)
    jsonschema.validate(post(service_url, EXAMPLE[0]).json(), score)
    for code in ("400", "408", "413", "415", "422"):
        assert code in one["responses"] and code in many["responses"]
