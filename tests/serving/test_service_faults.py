"""The service's handlers in-process (Starlette's TestClient on the `http` routes), with a real
Scorer whose parts are made to fail: an internal fault answers a contract-valid fail-open score
per event, and input that is not strict JSON or not a valid batch changes no state."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import jsonschema
import pytest
from starlette.testclient import TestClient

from moat.models.memory_store import MemoryStore
from moat.serving import service
from moat.serving.fail_open import MOAT_ERROR
from moat.serving.metrics import ERROR_KINDS
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT

EXAMPLE = [json.loads(line) for line in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]


@dataclass
class RecordingMetrics:
    errors: list[str] = field(default_factory=list)
    observed: int = 0

    def error(self, kind: str) -> None:
        assert kind in ERROR_KINDS, kind  # an unknown kind would be a series no alert watches
        self.errors.append(kind)

    def observe(self, scores, seconds: float, scorer) -> None:
        self.observed += len(scores)

    def scored_together(self, calls: int) -> None:
        pass


@dataclass
class FakeService:
    scorer: Scorer
    settings: ServingSettings = field(default_factory=ServingSettings)
    metrics: RecordingMetrics = field(default_factory=RecordingMetrics)
    refrozen: bool = False


@pytest.fixture
def svc() -> FakeService:
    return FakeService(Scorer(ServingSettings(), store=MemoryStore()))


@pytest.fixture
def client(svc: FakeService) -> TestClient:
    return TestClient(service.build_app(lambda: svc))


def _raise(*args, **kwargs):
    raise ValueError("injected fault")


Sabotage = Callable[[FakeService, pytest.MonkeyPatch], None]
FAULTS: list[tuple[str, Sabotage, bool]] = [
    # (where the fault is, how to cause it, whether the call fails open)
    ("no fault", lambda s, mp: None, False),
    ("state read", lambda s, mp: mp.setattr(s.scorer.store, "visit", _raise), True),
    ("campaign sketch", lambda s, mp: mp.setattr(s.scorer.store, "campaign", _raise), True),
    ("holds, after state changed", lambda s, mp: mp.setattr(s.scorer.store, "get_holds", _raise), True),
    ("network", lambda s, mp: mp.setattr(s.scorer, "session", None), True),
    ("event validation itself", lambda s, mp: mp.setattr(service.Event, "model_validate", _raise), True),
    # Metrics come after scoring: the real scores must be answered, not an unscored allow.
    ("metrics after scoring", lambda s, mp: mp.setattr(s.metrics, "observe", _raise), False),
]


@pytest.mark.parametrize("case, sabotage, fails_open", FAULTS, ids=[f[0] for f in FAULTS])
def test_internal_fault_answers_contract_valid_fail_open(svc: FakeService, client: TestClient, monkeypatch, score_schema: dict, case: str, sabotage: Sabotage, fails_open: bool) -> None:
    sabotage(svc, monkeypatch)
    one = client.post("/score", json=EXAMPLE[0])
    many = client.post("/score/batch", json=EXAMPLE[1:])
    assert one.status_code == many.status_code == 200
    assert isinstance(one.json(), dict) and isinstance(many.json(), list)
    answers = [one.json(), *many.json()]
    for answer in answers:
        jsonschema.validate(answer, score_schema)
        assert answer["model_version"] == svc.scorer.model_version
    assert [a["request_id"] for a in answers] == [e["request_id"] for e in EXAMPLE]
    if fails_open:
        assert all(a["reasons"] == [MOAT_ERROR] and a["action"] == "allow" and a["risk"] == 0.0 for a in answers)
    else:
        assert not any(MOAT_ERROR in a["reasons"] for a in answers)
    # A fault is counted once per call; valid traffic without one counts nothing.
    assert svc.metrics.errors == ([] if case == "no fault" else ["internal", "internal"])


NOT_STRICT_JSON = [
    # (case, raw body, field named in the 400)
    ("NaN", b'{"ts": NaN}', "body"),
    ("Infinity", b'{"ts": Infinity}', "body"),
    ("-Infinity inside params", b'{"params": {"temperature": -Infinity}}', "body"),
    ("float beyond a double", b'{"ts": 1e400}', "body"),
    ("integer of 5,000 digits", b'{"ts": ' + b"9" * 5000 + b"}", "body"),
    ("integer of 401 digits", b'{"params": {"max_tokens": 1' + b"0" * 400 + b"}}", "body"),
    ("duplicate key", b'{"ts": 1, "ts": 2}', "ts"),
    ("duplicate nested key", b'{"params": {"temperature": 0.1, "temperature": 1.9}}', "temperature"),
]


@pytest.mark.parametrize("case, raw, named", NOT_STRICT_JSON, ids=[c[0] for c in NOT_STRICT_JSON])
def test_json_that_is_not_strict_is_a_400_naming_the_field(svc: FakeService, client: TestClient, case: str, raw: bytes, named: str) -> None:
    r = client.post("/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == named
    if named != "body":
        assert repr(named) in r.json()["error"]
    assert svc.metrics.errors == ["bad_json"]


@pytest.mark.parametrize(
    "case, tail, status",
    [
        ("NaN in the last event", b'{"request_id": "z", "ts": NaN, "account_id": "a", "prompt": "p"}', 400),
        ("duplicate key in the last event", b'{"request_id": "z", "ts": 1, "ts": 2, "account_id": "a", "prompt": "p"}', 400),
        ("invalid last event", b'{"request_id": "z", "ts": 1, "account_id": "a"}', 422),
    ],
)
def test_a_bad_event_late_in_a_batch_rejects_the_batch_before_any_state_changes(svc: FakeService, client: TestClient, case: str, tail: bytes, status: int) -> None:
    raw = b"[" + b",".join(json.dumps(e).encode() for e in EXAMPLE) + b"," + tail + b"]"
    r = client.post("/score/batch", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert svc.scorer.store.size() == 0
    assert svc.scorer.counters.scored == 0


def test_valid_numbers_at_the_edge_are_read(client: TestClient) -> None:
    # The largest values the contract's bounds admit (models/events.py).
    body = {**EXAMPLE[0], "ts": 253402300799, "params": {"seed": -(2**63), "max_tokens": 10**7}}
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    assert MOAT_ERROR not in r.json()["reasons"]
