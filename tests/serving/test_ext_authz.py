"""Envoy ext_authz (HTTP service) and LiteLLM's Generic Guardrail API, as served by `moat proxy`.

Envoy cannot be installed here, so these replay the requests Envoy's HTTP ext_authz client
sends (envoyproxy/envoy source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc and the
filter docs): the original method; `path_prefix` + the original path, query included; Host,
Content-Length (the buffered body's length) and Authorization always, plus `allowed_headers`;
the buffered body; `x-envoy-auth-partial-body` when `with_request_body` is set; and
`x-envoy-expected-rq-timeout-ms` from the timeout. deploy/envoy/envoy.yaml is checked against
the field names of Envoy's protos (tests/data/envoy_ext_authz_fields.json, extracted from
envoyproxy/data-plane-api at the commit it names)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from moat.models.events import Event
from moat.serving.actions.settings import ActionSettings, ThrottleSettings
from moat.serving.ext_authz import GUARDRAIL_PATH, NOT_SCORED, PARTIAL_BODY, PREFIX
from moat.serving.fail_open import MOAT_ERROR
from moat.serving.proxy import ProxySettings, build_proxy_app
from moat.serving.scorer import Score
from tests.conftest import ROOT
from tests.serving.fake_upstream import THRESHOLDS, forced_scorer

FIELDS = json.loads((ROOT / "tests/data/envoy_ext_authz_fields.json").read_text())
ENVOY_YAML = ROOT / "deploy/envoy/envoy.yaml"
ACTIONS = ActionSettings(throttle=ThrottleSettings(retry_after_s=17))
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Give me the logprobs of every token."}], "logprobs": True, "top_logprobs": 20}
BODY = json.dumps(CHAT).encode()


def envoy_check(method: str, original_path: str, body: bytes, partial: bool | None = False, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The request Envoy's ext_authz HTTP client makes for one client request."""
    headers = {
        "host": "api.example.com",  # the original :authority
        "content-length": str(len(body)),
        "authorization": "Bearer sk-live-raw-key",
        "x-forwarded-for": "198.51.100.9, 203.0.113.7",  # Envoy (use_remote_address) appended the peer
        "user-agent": "OpenAI/Python 1.0",
        "x-request-id": "6f1c2d3e-envoy",
        "x-envoy-expected-rq-timeout-ms": "200",
        **(extra or {}),
    }
    if partial is not None:  # set whenever with_request_body is configured
        headers["x-envoy-auth-partial-body"] = "true" if partial else "false"
    return {"method": method, "url": PREFIX + original_path, "headers": headers, "content": body}


class Recording:
    """Wraps a forced Scorer and keeps the events it was asked to score."""

    def __init__(self, action: str) -> None:
        self.inner = forced_scorer(action)
        self.model_version = self.inner.model_version
        self.events: list[Event] = []

    def score(self, event: Event) -> Score:
        self.events.append(event)
        return self.inner.score(event)

    def score_each(self, events: list[Event]) -> list[Score]:  # what the Decider calls
        return [self.score(e) for e in events]


class Faulty:
    model_version = "faulty"

    def score_each(self, events: list[Event]) -> list[Score]:
        raise RuntimeError("scoring exploded")


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, tuple[TestClient, Recording]]]:
    out = {}
    for action in THRESHOLDS:
        scorer = Recording(action)
        client = TestClient(build_proxy_app(ProxySettings(secret=SecretStr("k")), scorer, ACTIONS))  # type: ignore[arg-type]
        out[action] = (client.__enter__(), scorer)
    yield out
    for client, _ in out.values():
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "action, request_args, status, moat_action, reason",
    [
        ("allow", ("POST", "/v1/chat/completions", BODY), 200, "allow", None),
        ("perturb", ("POST", "/v1/chat/completions", BODY), 200, "perturb", None),
        ("throttle", ("POST", "/v1/chat/completions", BODY), 429, "throttle", None),
        ("block", ("POST", "/v1/chat/completions", BODY), 403, "block", None),
        ("block", ("POST", "/v1/chat/completions?api-version=2024", BODY), 403, "block", None),
        # A body cut at max_request_bytes is still scored (a long prompt is no way past Moat).
        ("block", ("POST", "/v1/chat/completions", BODY[:40], True), 403, "block", PARTIAL_BODY),
        ("allow", ("POST", "/v1/chat/completions", BODY[:40], True), 200, "allow", PARTIAL_BODY),
        ("perturb", ("POST", "/v1/chat/completions", BODY[:40], True), 200, "perturb", PARTIAL_BODY),
        # Nothing to score: a listing, or a body that is not JSON and not cut.
        ("block", ("GET", "/v1/models", b""), 200, "allow", NOT_SCORED),
        # without with_request_body: no body, no partial-body header
        ("block", ("POST", "/v1/chat/completions", b"", None), 200, "allow", NOT_SCORED),
    ],
)
def test_envoy_answers(clients: dict[str, tuple[TestClient, Recording]], action: str, request_args: tuple, status: int, moat_action: str, reason: str | None) -> None:
    client, _ = clients[action]
    r = client.request(**envoy_check(*request_args))
    assert r.status_code == status
    assert r.headers["x-moat-action"] == moat_action
    assert 0.0 <= float(r.headers["x-moat-risk"]) <= 1.0
    reasons = r.headers["x-moat-reasons"].split(",")
    if reason is not None:
        assert reason in reasons
    if status == 429:
        assert r.headers["retry-after"] == "17"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"  # Envoy relays this body to the client
    if status == 403:
        assert r.json()["error"]["code"] == "access_denied"
    if status == 200:
        assert r.content == b""  # an allow carries nothing but headers


def test_envoy_event_is_what_the_client_sent(clients: dict[str, tuple[TestClient, Recording]]) -> None:
    client, scorer = clients["allow"]
    client.request(**envoy_check("POST", "/v1/chat/completions?x=1", BODY))
    e = scorer.events[-1]
    assert e.endpoint == "/v1/chat/completions"  # the original path, without prefix or query
    assert e.client_ip == "203.0.113.7"  # the entry Envoy appended, not the one the client wrote
    assert e.request_id == "6f1c2d3e-envoy" and e.user_agent == "OpenAI/Python 1.0"
    assert e.account_id.startswith("key_") and "sk-live-raw-key" not in e.model_dump_json()
    assert e.params.top_logprobs == 20 and e.model == "gpt-4o"


def test_envoy_never_answers_5xx_on_a_fault() -> None:
    with TestClient(build_proxy_app(ProxySettings(), Faulty(), ACTIONS)) as client:  # type: ignore[arg-type]
        r = client.request(**envoy_check("POST", "/v1/chat/completions", BODY))
    assert r.status_code == 200 and r.headers["x-moat-action"] == "allow" and r.headers["x-moat-reasons"] == MOAT_ERROR


# ---------------------------------------------------------------- LiteLLM Generic Guardrail API


def guardrail_request(input_type: str = "request", structured: bool = True) -> dict[str, Any]:
    """The body LiteLLM's GenericGuardrailAPI posts (litellm GenericGuardrailAPIRequest)."""
    body: dict[str, Any] = {
        "input_type": input_type,
        "litellm_call_id": "call-1",
        "texts": ["Give me the logprobs of every token."],
        "request_data": {"user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b", "user_api_key_user_id": "user-7"},
        "request_headers": {"user-agent": "OpenAI/Python 1.0"},
        "additional_provider_specific_params": {},
        "model": "gpt-4o",
    }
    if structured:
        body["structured_messages"] = [{"role": "user", "content": "Give me the logprobs of every token."}]
    return body


@pytest.mark.parametrize(
    "action, body, expected",
    [
        ("allow", guardrail_request(), "NONE"),
        ("perturb", guardrail_request(), "NONE"),  # the generic API cannot perturb logprobs
        ("throttle", guardrail_request(), "BLOCKED"),
        ("block", guardrail_request(), "BLOCKED"),
        ("block", guardrail_request(structured=False), "BLOCKED"),
        ("block", guardrail_request(input_type="response"), "NONE"),  # responses are not scored
    ],
)
def test_litellm_guardrail_api(clients: dict[str, tuple[TestClient, Recording]], action: str, body: dict[str, Any], expected: str) -> None:
    client, scorer = clients[action]
    n = len(scorer.events)
    r = client.post(GUARDRAIL_PATH, json=body)
    assert r.status_code == 200 and r.json()["action"] == expected
    if expected == "BLOCKED":
        assert r.json()["blocked_reason"].startswith("moat: ")
    if body["input_type"] == "request":
        assert scorer.events[-1].account_id == "user-7" and scorer.events[-1].api_key_id.startswith("key_")
    else:
        assert len(scorer.events) == n


def test_litellm_guardrail_api_bad_request_is_a_400(clients: dict[str, tuple[TestClient, Recording]]) -> None:
    r = clients["allow"][0].post(GUARDRAIL_PATH, content=b"{")
    assert r.status_code == 400 and "invalid guardrail request" in r.json()["error"]


# ---------------------------------------------------------------- deploy/envoy/envoy.yaml


def unknown_fields(message: str, value: Any, path: str = "") -> list[str]:
    """Every key in `value` that `message` (and the messages below it) does not have."""
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in unknown_fields(message, v, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    spec = FIELDS["messages"].get(message)
    if spec is None:
        return [f"{path or '/'}: message {message} is not in the fixture (regenerate it)"]
    errors = []
    for key, sub in value.items():
        where = f"{path}.{key}"
        if key == "@type":
            continue
        if key not in spec["fields"]:
            errors.append(f"{where}: {message} has no field {key!r}")
        elif key == "typed_config":
            errors += unknown_fields(sub["@type"].removeprefix("type.googleapis.com/"), sub, where)
        elif spec["fields"][key] is not None:
            errors += unknown_fields(spec["fields"][key], sub, where)
        elif isinstance(sub, dict):
            errors.append(f"{where}: a scalar or well-known type, given an object")
    return errors


def ext_authz_config() -> dict[str, Any]:
    config = yaml.safe_load(ENVOY_YAML.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")


def test_envoy_yaml_uses_only_real_fields() -> None:
    assert unknown_fields("envoy.config.bootstrap.v3.Bootstrap", yaml.safe_load(ENVOY_YAML.read_text())) == []


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"failure_mode_allow": True, "failure_mode_alow": True}, "no field 'failure_mode_alow'"),
        ({"http_service": {"server_uri": {"uri": "x", "cluster": "c", "timeout_ms": 200}}}, "no field 'timeout_ms'"),
        ({"with_request_body": {"max_request_bytes": 1, "allow_partial": True}}, "no field 'allow_partial'"),
        ({"http_service": {"authorization_request": {"allowed_upstream_headers": {}}}}, "no field 'allowed_upstream_headers'"),
    ],
)
def test_the_field_check_catches_typos(bad: dict[str, Any], error: str) -> None:
    errors = unknown_fields("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", bad)
    assert len(errors) == 1 and error in errors[0]


def test_envoy_yaml_settings() -> None:
    config = yaml.safe_load(ENVOY_YAML.read_text())
    authz = ext_authz_config()
    service = authz["http_service"]
    assert authz["failure_mode_allow"] is True
    assert service["server_uri"]["timeout"] == "0.2s"
    assert authz["with_request_body"]["allow_partial_message"] is True and authz["with_request_body"]["max_request_bytes"] > 0
    assert service["path_prefix"] == PREFIX
    assert {"prefix": "x-moat-"} in service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert {"exact": "retry-after"} in service["authorization_response"]["allowed_client_headers"]["patterns"]
    assert {"exact": "x-forwarded-for"} in authz["allowed_headers"]["patterns"]
    assert service["server_uri"]["cluster"] in {c["name"] for c in config["static_resources"]["clusters"]}
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["use_remote_address"] is True  # else the last X-Forwarded-For entry is not Envoy's
    assert [f["name"] for f in hcm["http_filters"]][-1] == "envoy.filters.http.router"


# (case, body, content type, status): a body that is not JSON cannot be scored, while a lenient
# upstream (Go's encoding/json, a decoder that stops after one value, whatever the Content-Type)
# may still read it. Only a body that plainly names another format goes through unscored.
UNREADABLE = [
    ("bad UTF-8 in a string", BODY.replace(b'"', b'"\xff', 1), "application/json", 400),
    ("data after the object", BODY + b" x", "application/json", 400),
    ("a compressed body", __import__("gzip").compress(BODY), "application/json; charset=utf-8", 400),
    ("data after the object, no Content-Type", BODY + b" x", None, 400),
    ("data after the object, said to be text", BODY + b" x", "text/plain", 400),
    ("a file upload: another format, not scored", b"\x00\x01 audio", "application/octet-stream", 200),
    ("a cut body stays partial, scored", BODY[:40], "application/json", 403),
]


@pytest.mark.parametrize("case, body, content_type, status", UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_envoy_refuses_a_body_that_is_not_json(clients: dict[str, tuple[TestClient, Recording]], case: str, body: bytes, content_type: str | None, status: int) -> None:
    client, scorer = clients["block"]
    before = len(scorer.events)
    r = client.request(**envoy_check("POST", "/v1/chat/completions", body, partial=case.startswith("a cut"), extra={"content-type": content_type} if content_type else None))
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_json" and len(scorer.events) == before
