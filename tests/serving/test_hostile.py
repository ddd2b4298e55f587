"""The hostile-input corpus (tests/serving/hostile_corpus.py) against a real `moat serve`.

Moat fails open, so any input that makes it error out is a way past it. For every body: no 5xx
and no reset; no 200 for a body that is not a schema-valid event (the contract's JSON Schema
decides, over strictly read UTF-8 JSON); no fail-open reason for a schema-valid one; and a
rejected call scores nothing. Every schema-invalid body is aimed at one victim account, whose
first real request must then score exactly as on a fresh scorer.
"""

from __future__ import annotations

import json
import math
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from moat.models.events import Event
from moat.serving.fail_open import MOAT_ERROR, MOAT_OVERLOADED
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT
from tests.serving.hostile_corpus import BASE, Case, Framing, Identity, corpus, framing

SCHEMA = json.loads((CONTRACT / "event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
VICTIM = Identity("victim", "victim-key", "198.51.100.77")
FAIL_OPEN = {MOAT_ERROR, MOAT_OVERLOADED}
CASES = corpus()
# The victim's first real request, after every rejected body aimed at it. Its prompt and its
# client (user agent) appear nowhere else, so the valid bodies, which other accounts send, share
# neither its campaign nor its cohort: any difference from a fresh scorer is state a rejected
# body left.
PROBE = {**BASE, "request_id": "probe", "account_id": VICTIM.account_id, "api_key_id": VICTIM.api_key_id, "client_ip": VICTIM.client_ip,
         "user_agent": "hostile-probe/1.0", "messages": [{"role": "user", "content": "Probe text seen nowhere else in the corpus."}]}


class NotJson(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"{text[:20]} is not a finite double")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) < len(pairs):
        raise NotJson("duplicate key")
    return dict(pairs)


def strict_json(body: bytes) -> Any:
    """The document a body holds by RFC 8259 (UTF-8, a BOM ignored, no NaN, no repeated keys,
    numbers a double can hold), or NotJson."""
    try:
        text = body.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite, parse_int=lambda t: int(_finite(t)) if len(t) > 300 else int(t), object_pairs_hook=_unique)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, 4,300-digit ints
        raise NotJson(str(exc)) from exc


def schema_valid(case: Case, body: bytes) -> bool:
    try:
        doc = strict_json(body)
    except NotJson:
        return False
    if case.path == "/score/batch":
        return isinstance(doc, list) and all(VALIDATOR.is_valid(d) for d in doc)
    return VALIDATOR.is_valid(doc)


def scored_total(url: str) -> float:
    """Events scored so far: the sum of moat_requests_total over actions."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^moat_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_corpus_is_large_and_mixed() -> None:
    assert len(CASES) >= 300
    valid = [c for c in CASES if schema_valid(c, c.render(VICTIM))]
    # Both sides must be well represented, or the assertions below test little.
    assert 50 <= len(valid) <= len(CASES) - 200


@pytest.fixture(scope="module")
def outcomes(service_url: str) -> dict[str, tuple[int, Any, bool, float]]:
    """Every case sent once, in order: status, parsed answer, schema validity, events scored by it.
    Valid cases use an account of their own; invalid ones the victim."""
    out = {}
    before = scored_total(service_url)
    with httpx.Client(base_url=service_url, timeout=30) as client:
        for i, case in enumerate(CASES):
            probe_body = case.render(VICTIM)
            valid = schema_valid(case, probe_body)
            body = case.render(Identity(f"ok-{i}", f"ok-key-{i}", f"192.0.{i % 250}.1")) if valid else probe_body
            r = client.post(case.path, content=body, headers=dict(case.headers))
            try:
                answer = r.json()
            except ValueError:
                answer = r.text
            after = scored_total(service_url)
            out[case.name] = (r.status_code, answer, valid, after - before)
            before = after
    return out


def _answers(answer: Any) -> list[dict]:
    return answer if isinstance(answer, list) else [answer]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_body(outcomes: dict, case: Case) -> None:
    status, answer, valid, scored = outcomes[case.name]
    assert status < 500, f"{status}: {answer}"
    if case.expect is not None:
        assert status == case.expect, f"{status}: {answer}"
    if not valid:
        assert status != 200, f"schema-invalid body answered 200: {answer}"
    if status == 200:
        for a in _answers(answer):
            assert not FAIL_OPEN & set(a["reasons"]), f"schema-valid event failed open: {a}"
    else:
        assert scored == 0, f"a rejected call ({status}) scored {scored} events"
        assert isinstance(answer, dict) and answer.get("field"), f"a rejection names no field: {answer}"


def test_rejected_bodies_left_no_state(service_url: str, outcomes: dict) -> None:
    """After every invalid body aimed at the victim, its first real request scores as on a
    fresh scorer: nothing of them reached its account, key or address block, nor the campaign
    or cohort sketches."""
    assert any(not valid for _, _, valid, _ in outcomes.values())
    served = httpx.post(service_url + "/score", json=PROBE, timeout=30).json()
    fresh = Scorer(ServingSettings()).score(Event.model_validate(PROBE)).model_dump(exclude_none=True)
    assert served["action"] == fresh["action"]
    assert served["reasons"] == fresh["reasons"]
    assert served["risk"] == pytest.approx(fresh["risk"], abs=1e-5)


def _send_raw(url: str, case: Framing) -> bytes:
    host = urlsplit(url)
    with socket.create_connection((host.hostname, host.port), timeout=15) as s:
        s.sendall(case.head.encode() + b"\r\nConnection: close\r\n\r\n" + case.body)
        data = b""
        while not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("case", framing(), ids=[f.name for f in framing()])
def test_framing(service_url: str, case: Framing) -> None:
    """Requests an HTTP client would refuse to send get a 4xx status line, not a hang or a reset."""
    before = scored_total(service_url)
    head = _send_raw(service_url, case)
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else None
    assert status in case.statuses, head[:200]
    assert scored_total(service_url) == before
