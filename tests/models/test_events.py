"""The event model: strict parsing against the contract, and a featurizer that never raises on
an event the model accepts (issue 11: an input that breaks scoring is answered allow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from moat.models.events import MAX_LOGIT_BIAS, MAX_OUTPUT_TOKENS, MAX_TEXT_CHARS, MAX_TS, SEED_RANGE, Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.summary import ip_prefix
from moat.models.traces import iter_raw
from tests.conftest import CONTRACT, ROOT, SHARED_DATA

VALIDATOR = jsonschema.Draft202012Validator(json.loads((CONTRACT / "event.schema.json").read_text()))
BASE: dict[str, Any] = {"request_id": "r1", "ts": 1764500005.5, "account_id": "acct", "messages": [{"role": "user", "content": "hello there"}]}


def with_(path: str, value: Any) -> dict[str, Any]:
    """BASE with a dotted path set (params.logit_bias.1 sets token "1")."""
    out = json.loads(json.dumps(BASE))
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


REJECTED = [
    # The repros of issue 11: coercion, nulls, numbers beyond any real request.
    ("ts as a string", with_("ts", "1764500005"), "ts"),
    ("ts as a bool", with_("ts", True), "ts"),
    ("ts NaN", with_("ts", float("nan")), "ts"),
    ("ts infinite", with_("ts", float("inf")), "ts"),
    ("ts 1e308", with_("ts", 1e308), "ts"),
    ("ts negative", with_("ts", -1e308), "ts"),
    ("ts 400 digits", with_("ts", 10**400), "ts"),
    ("logprobs as a string", with_("params.logprobs", "yes"), "params.logprobs"),
    ("stream as 1", with_("params.stream", 1), "params.stream"),
    ("temperature null", with_("params.temperature", None), "params.temperature"),
    ("temperature NaN", with_("params.temperature", float("nan")), "params.temperature"),
    ("temperature as a string", with_("params.temperature", "0.5"), "params.temperature"),
    ("logit_bias value a string", with_("params.logit_bias.1", "5"), "params.logit_bias.1"),
    ("logit_bias value 101", with_("params.logit_bias.1", 101), "params.logit_bias.1"),
    ("logit_bias value -inf", with_("params.logit_bias.1", float("-inf")), "params.logit_bias.1"),
    ("logit_bias too many entries", with_("params.logit_bias", {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}), "params.logit_bias"),
    ("max_tokens 1 and 400 zeros", with_("params.max_tokens", 10**400), "params.max_tokens"),
    ("max_tokens above the bound", with_("params.max_tokens", MAX_OUTPUT_TOKENS + 1), "params.max_tokens"),
    ("max_tokens zero", with_("params.max_tokens", 0), "params.max_tokens"),
    ("max_tokens fractional", with_("params.max_tokens", 5.5), "params.max_tokens"),
    ("max_tokens a bool", with_("params.max_tokens", True), "params.max_tokens"),
    ("n 129", with_("params.n", 129), "params.n"),
    ("top_logprobs 21", with_("params.top_logprobs", 21), "params.top_logprobs"),
    ("seed beyond 64 bits", with_("params.seed", 2**63), "params.seed"),
    ("stop 17 strings", with_("params.stop", ["x"] * 17), "params.stop.list"),
    ("stop a number", with_("params.stop", 5), "params.stop.list"),
    ("params null", with_("params", None), "params"),
    ("api_key_id null", with_("api_key_id", None), "api_key_id"),
    ("prompt null beside messages", with_("prompt", None), "prompt"),
    ("label true", with_("label", True), "label"),
    ("label 2", with_("label", 2), "label"),
    ("request_id a number", with_("request_id", 7), "request_id"),
    ("request_id empty", with_("request_id", ""), "request_id"),
    ("request_id 129 characters", with_("request_id", "r" * 129), "request_id"),
    ("account_id with a lone surrogate", with_("account_id", "a\ud800"), "account_id"),
    ("content a number", with_("messages.0.content", 3), "messages.0.content"),
    ("role unknown", with_("messages.0.role", "wizard"), "messages.0.role"),
    ("1,025 messages", with_("messages", [{"role": "user", "content": "x"}] * 1025), "messages"),
    ("prompt over the text bound", {**BASE, "prompt": "x" * (MAX_TEXT_CHARS + 1)}, "prompt"),
]


@pytest.mark.parametrize("case, raw, field", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_naming_the_field(case: str, raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Event.model_validate(raw)
    assert ".".join(str(p) for p in info.value.errors()[0]["loc"]) == field


# (case, event, attribute path, value as read)
ACCEPTED = [
    ("ts an integer", with_("ts", 1764500005), "ts", 1764500005.0),
    ("ts zero", with_("ts", 0), "ts", 0.0),
    ("ts at the bound", with_("ts", MAX_TS), "ts", MAX_TS),
    ("max_tokens an integral float (JSON Schema integer)", with_("params.max_tokens", 5.0), "params.max_tokens", 5),
    ("max_tokens at the bound", with_("params.max_tokens", MAX_OUTPUT_TOKENS), "params.max_tokens", MAX_OUTPUT_TOKENS),
    ("temperature an integer", with_("params.temperature", 1), "params.temperature", 1.0),
    ("seed at the 64-bit floor", with_("params.seed", SEED_RANGE[0]), "params.seed", SEED_RANGE[0]),
    ("logit_bias at the entry bound", with_("params.logit_bias", {str(i): -100 for i in range(MAX_LOGIT_BIAS)}), "params.logit_bias.1", -100.0),
    ("stop one string", with_("params.stop", "END"), "params.stop", "END"),
    ("unknown param kept, null allowed there", with_("params.vendor_option", None), "params.vendor_option", None),
    ("unknown top-level field ignored", with_("trace_note", None), "request_id", "r1"),
    ("empty messages", with_("messages", []), "messages", []),
    ("lone surrogate in text", with_("messages.0.content", "a\ud800b"), "messages.0.content", "a\ud800b"),
    ("label as 1.0", with_("label", 1.0), "label", 1),
]


@pytest.mark.parametrize("case, raw, path, value", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_as_the_contract_reads_it(case: str, raw: dict, path: str, value: Any) -> None:
    assert VALIDATOR.is_valid(raw), "the case itself must be schema-valid"
    node: Any = Event.model_validate(raw)
    for p in path.split("."):
        node = node[int(p)] if isinstance(node, list) else node[p] if isinstance(node, dict) else getattr(node, p)
    assert node == value and type(node) is type(value)


TRACES = [CONTRACT / "example_trace.jsonl", ROOT / "tests" / "data" / "golden_trace.jsonl"]
EXTERNAL = sorted(SHARED_DATA.glob("external/*.jsonl.gz")) if SHARED_DATA.is_dir() else []


def _all_valid(path: Path) -> None:
    bad = []
    for i, raw in enumerate(iter_raw(path)):
        try:
            Event.model_validate(raw)
        except ValidationError as exc:
            bad.append(f"event {i + 1}: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}")
    assert not bad, f"{path.name}: {len(bad)} valid contract events rejected, first: {bad[:3]}"


@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_repository_traces_stay_valid(path: Path) -> None:
    _all_valid(path)


@pytest.mark.shared_data
def test_external_traces_stay_valid() -> None:
    assert EXTERNAL, f"no traces under {SHARED_DATA / 'external'}"
    for path in EXTERNAL:
        _all_valid(path)


# Any JSON value, numbers included well past every bound (but finite: JSON has no NaN).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
PATHS = ["request_id", "ts", "account_id", "api_key_id", "client_ip", "endpoint", "messages", "messages.0", "messages.0.role", "messages.0.content", "prompt", "params", "label", "family",
         *(f"params.{p}" for p in ("temperature", "top_p", "max_tokens", "n", "logprobs", "top_logprobs", "logit_bias", "logit_bias.7", "seed", "stream", "stop", "stop.0"))]


@settings(max_examples=1500, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JSON_VALUES)
def test_model_accepts_nothing_the_schema_rejects(path: str, value: Any) -> None:
    """The service answers 200 only for what the model accepts: that must be schema-valid."""
    raw = with_("params.stop", ["x"]) if path == "params.stop.0" else BASE
    raw = json.loads(json.dumps(raw))
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    node[int(last) if isinstance(node, list) else last] = value
    try:
        Event.model_validate(raw)
    except ValidationError:
        return
    assert VALIDATOR.is_valid(raw), f"model accepted a schema-invalid event: {raw}"


TEXTS = st.sampled_from(["", "hi", "a\ud800b", "\u202e\u0000 rtl", "🙂" * 3000, "word " * 20_000, "1234 5678 " * 50, "e\u0301" * 100])
EVENTS = st.fixed_dictionaries(
    {
        "request_id": st.just("r"),
        "ts": st.sampled_from([0.0, 1.0, 1764500005.0, MAX_TS, MAX_TS - 1, 1e9 + 0.5]),
        "account_id": st.sampled_from(["a", "b"]),
        "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]), "content": TEXTS}), max_size=4),
    },
    optional={
        "api_key_id": st.sampled_from(["k", "", "k2"]),
        "client_ip": st.sampled_from(["203.0.113.5", "::ffff:203.0.113.5", "fe80::1%eth0", "2001:db8::1", "not an ip", ""]),
        "user_agent": st.sampled_from(["", "curl/8", "Mozilla/5.0"]),
        "params": st.fixed_dictionaries({}, optional={
            "temperature": st.sampled_from([0, 0.0, 2, 2.0, 1e-300]),
            "top_p": st.sampled_from([0, 1]),
            "max_tokens": st.sampled_from([1, MAX_OUTPUT_TOKENS]),
            "n": st.sampled_from([1, 128]),
            "logprobs": st.booleans(),
            "top_logprobs": st.sampled_from([0, 20]),
            "logit_bias": st.sampled_from([{}, {"1": 100}, {"1": -100, "2": 100}, {str(i): 1e-300 for i in range(MAX_LOGIT_BIAS)}]),
            "seed": st.sampled_from(list(SEED_RANGE)),
            "stream": st.booleans(),
            "stop": st.sampled_from(["", ["a"] * 16, []]),
        }),
    },
)


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=st.lists(EVENTS, min_size=1, max_size=4))
def test_featurizer_never_raises_on_an_accepted_event(events: list[dict]) -> None:
    """Extreme but valid events, with time jumping both ways: features are finite and in the
    float16 range the state stores them in."""
    featurizer = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    for raw in events:
        step = featurizer.step(Event.model_validate(raw))
        for w in step.windows:
            assert np.isfinite(w.feats.astype(np.float32)).all(), (raw, w.scope)


@pytest.mark.parametrize("ip, prefix", [("::ffff:203.0.113.5", "203.0.113.0/24"), ("203.0.113.5", "203.0.113.0/24"), ("fe80::1%eth0", "fe80::/48"), ("1.2.3.4\x00", None)])
def test_ip_prefix_reads_mapped_addresses_as_ipv4(ip: str, prefix: str | None) -> None:
    assert ip_prefix(ip) == prefix
