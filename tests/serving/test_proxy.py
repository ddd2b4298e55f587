"""`moat proxy` end to end: the real openai SDK -> the proxy (uvicorn thread, in-process Scorer
with thresholds forcing each action) -> a fake OpenAI upstream (uvicorn thread)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moat.models.events import Event
from moat.serving.actions.settings import ActionSettings, PerturbSettings
from moat.serving.actions.watermark import Watermarker, WatermarkSettings, detect
from moat.serving.proxy import Decider, IdentityResolver, ProxySettings, build_proxy_app, client_address, openai_event
from moat.serving.proxy_cli import SERVER_OPTIONS
from moat.serving.scorer import Score, Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT
from tests.serving.fake_upstream import LOGPROBS, THRESHOLDS, TOKENS, Seen, forced_scorer, free_port, serve_app

ACTIONS = ActionSettings(perturb=PerturbSettings(secret=SecretStr("test-secret"), max_top_logprobs=1, round_step=0.1, noise_nats=0.3, temperature_floor=0.7))
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Say hello"}], "logprobs": True, "top_logprobs": 5, "temperature": 0.0, "logit_bias": {"42": 100}}


@pytest.fixture(scope="module")
def proxies(upstream: tuple[str, Seen]) -> Iterator[dict[str, str]]:
    url, _ = upstream
    urls: dict[str, str] = {}
    servers = [serve_app(build_proxy_app(ProxySettings(upstream=url, secret=SecretStr("k")), forced_scorer(a), ACTIONS)) for a in THRESHOLDS]
    for action, server in zip(THRESHOLDS, servers):
        urls[action] = server.__enter__()
    yield urls
    for server in servers:
        server.__exit__(None, None, None)


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test-secret-key", max_retries=0)


def call(base: str, stream: bool, **overrides: Any) -> tuple[str, list[Any]]:
    """The text and the per-token logprob entries the SDK hands the application."""
    kwargs = {**CHAT, **overrides}
    client = sdk(base)
    if not stream:
        r = client.chat.completions.create(**kwargs)
        return r.choices[0].message.content or "", list(r.choices[0].logprobs.content if r.choices[0].logprobs else [])
    text, entries = "", []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            entries += choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
    return text, entries


@pytest.mark.parametrize("stream", [False, True])
def test_allow_forwards_exact_logprobs(proxies: dict[str, str], stream: bool) -> None:
    text, entries = call(proxies["allow"], stream)
    assert text == "".join(TOKENS)
    assert [e.logprob for e in entries] == LOGPROBS
    assert [len(e.top_logprobs) for e in entries] == [5] * len(TOKENS)


@pytest.mark.parametrize("stream", [False, True])
def test_allow_passes_bytes_untouched(upstream: tuple[str, Seen], proxies: dict[str, str], stream: bool) -> None:
    body = {**CHAT, "stream": stream}
    direct = httpx.post(upstream[0] + "/v1/chat/completions", json=body)
    proxied = httpx.post(proxies["allow"] + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-x"})
    assert proxied.status_code == direct.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert upstream[1].bodies[-1] == body  # the request went out unchanged too


@pytest.mark.parametrize(
    "action, stream, error, status",
    [
        ("throttle", False, openai.RateLimitError, 429),
        ("throttle", True, openai.RateLimitError, 429),
        ("block", False, openai.PermissionDeniedError, 403),
        ("block", True, openai.PermissionDeniedError, 403),
    ],
)
def test_denials_raise_the_sdk_exception(upstream: tuple[str, Seen], proxies: dict[str, str], action: str, stream: bool, error: type, status: int) -> None:
    before = len(upstream[1].bodies)
    with pytest.raises(error) as info:
        call(proxies[action], stream)
    assert info.value.status_code == status
    assert info.value.body["code"] == ("rate_limit_exceeded" if action == "throttle" else "access_denied")  # the OpenAI error shape, read by the SDK
    assert ("retry-after" in info.value.response.headers) == (action == "throttle")
    assert len(upstream[1].bodies) == before  # never forwarded


def test_throttle_retry_after_is_the_setting(proxies: dict[str, str]) -> None:
    r = httpx.post(proxies["throttle"] + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 429 and r.headers["retry-after"] == str(ACTIONS.throttle.retry_after_s)
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_perturb_changes_what_the_sdk_receives(upstream: tuple[str, Seen], proxies: dict[str, str], stream: bool) -> None:
    text, entries = call(proxies["perturb"], stream)
    assert text == "".join(TOKENS)  # the answer itself is intact
    got = [e.logprob for e in entries]
    assert len(got) == len(LOGPROBS) and got != LOGPROBS
    assert all(abs(v * 10 - round(v * 10)) < 1e-6 and v <= 0 for v in got)  # rounded to the 0.1 grid
    assert all(len(e.top_logprobs) <= 1 for e in entries)
    sent = upstream[1].bodies[-1]  # the request side: capped before it left
    assert sent["top_logprobs"] == 1 and sent["temperature"] == 0.7 and "logit_bias" not in sent


def test_perturb_stream_and_whole_answer_agree(proxies: dict[str, str]) -> None:
    """The noise is keyed by the request and the position, not by how the answer was cut."""
    _, whole = call(proxies["perturb"], stream=False)
    _, streamed = call(proxies["perturb"], stream=True)
    assert [e.logprob for e in whole] == [e.logprob for e in streamed]


def call_responses(base: str, stream: bool) -> tuple[str, list[Any]]:
    """The Responses API through the openai SDK: the text and its logprob entries."""
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
    kwargs: dict[str, Any] = {"model": "fake", "input": [{"role": "user", "content": "hello"}], "include": ["message.output_text.logprobs"], "top_logprobs": 5, "temperature": 0}
    if not stream:
        part = client.responses.create(**kwargs).output[0].content[0]
        return part.text, list(part.logprobs or [])
    text, entries = "", []
    for event in client.responses.create(stream=True, **kwargs):
        if event.type == "response.output_text.delta":
            text += event.delta
            entries += event.logprobs or []
    return text, entries


@pytest.mark.parametrize("stream", [False, True])
def test_perturb_reaches_the_responses_api(upstream: tuple[str, Seen], proxies: dict[str, str], stream: bool) -> None:
    _, exact = call_responses(proxies["allow"], stream)
    assert [e.logprob for e in exact] == LOGPROBS
    text, entries = call_responses(proxies["perturb"], stream)
    assert text == "".join(TOKENS)
    got = [e.logprob for e in entries]
    assert len(got) == len(LOGPROBS) and got != LOGPROBS
    assert all(abs(v * 10 - round(v * 10)) < 1e-6 and v <= 0 for v in got)  # rounded to the 0.1 grid
    assert all(len(e.top_logprobs) <= 1 for e in entries)
    sent = upstream[1].bodies[-1]  # capped in the Responses API's own fields, none it would refuse
    assert (sent["top_logprobs"], sent["temperature"], sent["max_output_tokens"]) == (1, 0.7, ACTIONS.perturb.max_tokens)
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent


def test_perturbed_responses_stream_and_whole_answer_agree(proxies: dict[str, str]) -> None:
    _, whole = call_responses(proxies["perturb"], stream=False)
    _, streamed = call_responses(proxies["perturb"], stream=True)
    assert [e.logprob for e in whole] == [e.logprob for e in streamed]


@pytest.mark.parametrize("action", ["allow", "perturb"])
@pytest.mark.parametrize("model, error", [("fail-400", openai.BadRequestError), ("fail-500", openai.InternalServerError)])
def test_upstream_errors_pass_through(upstream: tuple[str, Seen], proxies: dict[str, str], action: str, model: str, error: type) -> None:
    with pytest.raises(error) as info:
        call(proxies[action], stream=False, model=model)
    assert info.value.body["code"] == f"fake_{model.removeprefix('fail-')}"
    direct = httpx.post(upstream[0] + "/v1/chat/completions", json={**CHAT, "model": model})
    proxied = httpx.post(proxies[action] + "/v1/chat/completions", json={**CHAT, "model": model})
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)


def test_get_is_forwarded_unscored(proxies: dict[str, str]) -> None:
    assert sdk(proxies["block"]).models.list().data[0].id == "fake"


class FaultyScorer:
    model_version = "faulty"

    def score_each(self, events: list[Event]) -> Any:
        raise RuntimeError("scoring exploded")


def test_a_scoring_fault_fails_open(upstream: tuple[str, Seen]) -> None:
    app = build_proxy_app(ProxySettings(upstream=upstream[0]), FaultyScorer(), ACTIONS)  # type: ignore[arg-type]
    with serve_app(app) as url:
        text, entries = call(url, stream=False)
    assert text == "".join(TOKENS) and [e.logprob for e in entries] == LOGPROBS


@pytest.mark.parametrize(
    "body",
    [
        {"model": "fake", "messages": [{"role": [], "content": "hi"}]},  # unhashable role
        {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": 10**400},  # beyond float range
        {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10**400},
        {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 10**400}},
    ],
    ids=["unhashable role", "huge temperature", "huge max_completion_tokens", "huge logit bias"],
)
def test_odd_values_are_still_scored_never_a_way_past_moat(upstream: tuple[str, Seen], proxies: dict[str, str], body: dict) -> None:
    """A value the contract cannot hold is clipped or read as a default: the request is scored,
    so the block proxy answers 403. These went unscored to the upstream (a fault building the
    event fails open), which an upstream that ignores unknown fields then answered."""
    r = httpx.post(proxies["block"] + "/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json", "authorization": "Bearer sk-x"}, timeout=10)
    assert r.status_code == 403, r.text


def test_unreachable_upstream_is_a_502_not_a_hang() -> None:
    app = build_proxy_app(ProxySettings(upstream="http://127.0.0.1:9"), forced_scorer("allow"), ACTIONS)
    with serve_app(app) as url:
        with pytest.raises(openai.InternalServerError) as info:
            call(url, stream=False)
    assert info.value.status_code == 502


# ---------------------------------------------------------------- identity and the Event


@pytest.mark.parametrize(
    "xff, peer, depth, expected",
    [
        (None, "10.0.0.1", 0, "10.0.0.1"),
        ("1.2.3.4", "10.0.0.1", 0, "10.0.0.1"),  # not trusted: a client can write any XFF
        ("6.6.6.6, 1.2.3.4", "10.0.0.1", 1, "1.2.3.4"),  # the trusted proxy appended the real client
        ("6.6.6.6, 1.2.3.4, 10.0.0.2", "10.0.0.1", 2, "1.2.3.4"),
        ("1.2.3.4", "10.0.0.1", 3, "1.2.3.4"),  # fewer hops than trusted: the leftmost there is
        ("not-an-ip", "10.0.0.1", 1, "10.0.0.1"),
        ("2001:db8::1", "10.0.0.1", 1, "2001:db8::1"),
    ],
)
def test_client_address(xff: str | None, peer: str, depth: int, expected: str) -> None:
    assert client_address(xff, peer, depth) == expected


@pytest.mark.parametrize(
    "headers, account_header, expected_account",
    [
        ({"authorization": "Bearer sk-live-123"}, "authorization", "hashed"),
        ({"authorization": "Bearer sk-live-123", "x-account-id": "acct-9"}, "x-account-id", "acct-9"),
        ({"authorization": "Bearer sk-live-123"}, "x-account-id", "anon:10.0.0.1"),
        ({}, "authorization", "anon:10.0.0.1"),
    ],
)
def test_identity_never_holds_the_raw_key(headers: dict[str, str], account_header: str, expected_account: str) -> None:
    resolver = IdentityResolver(ProxySettings(secret=SecretStr("k1"), account_header=account_header))
    who = resolver.resolve(headers, "10.0.0.1")
    if expected_account == "hashed":
        assert who.account_id == who.api_key_id and who.account_id.startswith("key_")
    else:
        assert who.account_id == expected_account
    assert "sk-live-123" not in repr(who)
    if "authorization" in headers:
        other = IdentityResolver(ProxySettings(secret=SecretStr("k2"), account_header=account_header)).resolve(headers, "10.0.0.1")
        assert other.api_key_id != who.api_key_id  # keyed: without the secret the id reveals nothing
        assert resolver.resolve(headers, "10.0.0.9").api_key_id == who.api_key_id  # stable per key


WHO = IdentityResolver(ProxySettings(secret=SecretStr("k"))).resolve({"authorization": "Bearer sk"}, "10.0.0.1")


@pytest.mark.parametrize(
    "body, check",
    [
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}, lambda e: e.messages[0].content == "hi"),
        ({"messages": [{"role": "function", "content": None}]}, lambda e: e.messages[0].role == "tool" and e.messages[0].content == ""),
        ({"prompt": ["a", "b"], "logprobs": 5}, lambda e: e.prompt == "a\nb" and e.params.logprobs and e.params.top_logprobs == 5),
        ({"prompt": "x", "temperature": 9, "top_logprobs": 99, "n": 0, "logit_bias": {"1": 500}}, lambda e: (e.params.temperature, e.params.top_logprobs, e.params.n, e.params.logit_bias) == (2.0, 20, 1, {"1": 100.0})),
        ({"messages": [], "max_completion_tokens": 7, "stop": ["s"] * 20}, lambda e: e.params.max_tokens == 7 and len(e.params.stop) == 16),
        ({"input": "embed me"}, lambda e: e.prompt == "embed me"),
        # The Responses API: a conversation as input (the tool output, with no role, left out),
        # logprobs asked for through `include`, its own name for the length cap.
        (
            {"input": [{"role": "developer", "content": "be brief"}, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}, {"type": "function_call_output", "call_id": "c", "output": "42"}],
             "include": ["message.output_text.logprobs"], "top_logprobs": 5, "max_output_tokens": 9},
            lambda e: [(m.role, m.content) for m in e.messages] == [("developer", "be brief"), ("user", "hi")] and e.params.logprobs and (e.params.top_logprobs, e.params.max_tokens) == (5, 9),
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "42"}]}, lambda e: e.messages is None and '"output": "42"' in e.prompt),
        ({"prompt": "x", "temperature": float("nan"), "seed": 2**70}, lambda e: e.params.temperature is None and e.params.seed == 2**63 - 1),
        ({"model": "\ud800", "prompt": "x", "n": 3}, lambda e: e.model is None and e.prompt == "x"),  # refused by the contract: scored without it
        ({"model": "m"}, lambda e: e.prompt == "" and e.messages is None),  # a generation with no text here: scored all the same
        ({"prompt": {"id": "pmpt_1"}, "input": "hi"}, lambda e: e.prompt == "hi"),  # the Responses API's stored-template reference
        ({"prompt": None, "input": "hi"}, lambda e: e.prompt == "hi"),
        (["not", "an", "object"], lambda e: e is None),
    ],
)
def test_openai_event(body: Any, check: Any) -> None:
    assert check(openai_event(body, "/v1/chat/completions", WHO, "ua", "r1", 1.0))


TEMPLATE = {"model": "m", "prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}}}
# (path, body, words the scored text holds, or None: not an event). A generation is scored even
# when its text is not plainly in the body (a stored template, tool outputs, a stored
# conversation), on what the body says; other APIs' bodies without text are not events.
GENERATIONS = [
    ("/v1/responses", {"model": "m", "previous_response_id": "resp_1"}, ["resp_1"]),
    ("/v1/responses", {**TEMPLATE, "conversation": "conv_1"}, ["pmpt_1", "Paris", "conv_1"]),
    ("/v1/responses", {"model": "m", "input": [{"type": "function_call_output", "call_id": "c1", "output": "42 degrees"}]}, ["42 degrees"]),
    ("/openai/deployments/d/chat/completions?api-version=1", {"model": "m"}, [""]),
    ("/v1/files", {"purpose": "batch"}, None),
    ("/v1/models", {}, None),
]


@pytest.mark.parametrize("path, body, words", GENERATIONS)
def test_a_generation_is_scored_without_its_text(path: str, body: dict[str, Any], words: list[str] | None) -> None:
    event = openai_event(body, path, WHO, "ua", "r1", 1.0)
    assert (event is not None) is (words is not None)
    if event is not None:
        assert event.endpoint == path and all(w in event.prompt for w in words)


def test_template_requests_read_as_what_they_say() -> None:
    """Two requests of one stored template with other variables are not a near-duplicate pair
    (scored as one constant text, a template user's traffic was throttled as a repeat burst)."""
    texts = [openai_event({**TEMPLATE, "prompt": {"id": "pmpt_1", "variables": {"city": c}}}, "/v1/responses", WHO, "ua", "r1", 1.0).prompt for c in ("Paris", "Oslo", "Paris")]
    assert texts[0] != texts[1] and texts[0] == texts[2]


# ---------------------------------------------------------------- the watermark through the proxy

PROSE = "First of all, I do not think you are right. Maybe we can't go toward it, although no one would mind; they are often late."
WM = ActionSettings(perturb=ACTIONS.perturb, watermark=WatermarkSettings(enabled=True, secret=SecretStr("proxy-watermark-key-0123")))


def prose_upstream() -> Starlette:
    """An upstream whose answers carry watermark carriers, streamed in small pieces."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        base = {"id": "c1", "created": 1, "model": "fake"}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": PROSE}, "logprobs": None, "finish_reason": "stop"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice]})

        async def events() -> AsyncIterator[bytes]:
            for i in range(0, len(PROSE), 7):
                chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": PROSE[i : i + 7]}, "logprobs": None, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            end = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def prose_proxies() -> Iterator[dict[str, str]]:
    with serve_app(prose_upstream()) as up:
        with serve_app(build_proxy_app(ProxySettings(upstream=up), forced_scorer("perturb"), WM)) as perturb:
            with serve_app(build_proxy_app(ProxySettings(upstream=up), forced_scorer("allow"), WM)) as allow:
                yield {"perturb": perturb, "allow": allow}


@pytest.mark.parametrize("stream", [False, True])
def test_perturb_watermarks_the_text_the_sdk_receives(prose_proxies: dict[str, str], stream: bool) -> None:
    text, _ = call(prose_proxies["perturb"], stream, logprobs=False, top_logprobs=None)
    key = WM.watermark.secret.get_secret_value().encode()
    assert text == Watermarker(key).apply(PROSE) != PROSE
    assert detect([text], key).hits == detect([text], key).carriers >= 8
    allowed, _ = call(prose_proxies["allow"], stream, logprobs=False, top_logprobs=None)
    assert allowed == PROSE  # allow relays the text as it came


# ---------------------------------------------------------------- the edge


def test_a_body_over_the_limit_is_a_413_in_the_openai_shape(upstream: tuple[str, Seen]) -> None:
    before = len(upstream[1].bodies)
    app = build_proxy_app(ProxySettings(upstream=upstream[0], max_body_bytes=1024), forced_scorer("allow"), ACTIONS)
    with serve_app(app) as url:
        r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert len(upstream[1].bodies) == before


class RecordingScorer:
    """Scores allow and keeps the events, to check what the proxy read from a request."""

    model_version = "recording"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def score_each(self, events: list[Event]) -> list[Score]:
        self.events.extend(events)
        return [Score(request_id=e.request_id, risk=0.0, action="allow", reasons=[], model_version=self.model_version) for e in events]


@pytest.mark.parametrize("depth, expected", [(0, "127.0.0.1"), (1, "6.6.6.6")])
def test_the_server_leaves_x_forwarded_for_to_moat(upstream: tuple[str, Seen], depth: int, expected: str) -> None:
    """As `moat proxy` serves it: uvicorn must not swap the local peer for the header's last
    entry, or depth 0 (no trusted proxy) would trust a header any client can write."""
    scorer = RecordingScorer()
    app = build_proxy_app(ProxySettings(upstream=upstream[0], forwarded_depth=depth), scorer, ACTIONS)  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": "6.6.6.6", "authorization": "Bearer sk-x"})
    finally:
        server.should_exit = True
        thread.join(10)
    assert r.status_code == 200
    assert [e.client_ip for e in scorer.events] == [expected]
    assert "date" in r.headers and len(r.headers.get_list("date")) == 1  # the upstream's own, once


@pytest.mark.parametrize("action", ["allow", "perturb"])
def test_a_client_leaving_a_stream_stops_the_upstream_generating(action: str) -> None:
    """The server drops writes to a closed client silently; the proxy must notice and close the
    upstream connection, or a long generation runs on for nobody."""
    stopped = threading.Event()

    async def chat(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            try:
                for i in range(400):  # 20 s unless stopped
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    await asyncio.sleep(0.05)
            finally:
                stopped.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    with serve_app(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])) as up:
        with serve_app(build_proxy_app(ProxySettings(upstream=up), forced_scorer(action), ACTIONS)) as url:
            with httpx.stream("POST", url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10) as r:
                first = next(r.iter_bytes())
            assert b"data:" in first
            assert stopped.wait(5), "the upstream kept generating after the client left"


@pytest.mark.parametrize("state", ["memory", "redis"])
def test_scoring_runs_on_the_loop_only_when_the_store_never_waits(upstream: tuple[str, Seen], state: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if state == "redis" else "memory"
    t, p, b = THRESHOLDS["block"]
    scorer = Scorer(ServingSettings(state=url, throttle_threshold=t, perturb_threshold=p, block_threshold=b))
    assert (Decider(scorer)._worker is None) == (state == "memory")
    with serve_app(build_proxy_app(ProxySettings(upstream=upstream[0]), scorer, ACTIONS)) as base:
        with pytest.raises(openai.PermissionDeniedError):
            call(base, stream=False)  # scored (and blocked) through either path


def test_a_repeated_authorization_header_scores_the_first_as_upstreams_read_it(upstream: tuple[str, Seen]) -> None:
    """A client adding its own `Authorization` after the real one was scored as a fresh account
    on every request, while the upstream billed the first (the real key)."""
    scorer = RecordingScorer()
    app = build_proxy_app(ProxySettings(upstream=upstream[0], secret=SecretStr("k")), scorer, ACTIONS)  # type: ignore[arg-type]
    with serve_app(app) as url:
        for i in range(3):
            headers = httpx.Headers([("authorization", "Bearer sk-REAL"), ("authorization", f"Bearer junk{i}"), ("content-type", "application/json")])
            assert httpx.post(url + "/v1/chat/completions", content=json.dumps(CHAT), headers=headers, timeout=10).status_code == 200
    real = IdentityResolver(ProxySettings(secret=SecretStr("k"))).key_id("sk-REAL")
    assert [e.account_id for e in scorer.events] == [real] * 3


# (case, whether the operator asked for them beside the upstream, status of a guardrail call)
DECISIONS_BESIDE = [("off by default: proxied like any path", False, 404), ("asked for", True, 200)]


@pytest.mark.parametrize("case, beside, status", DECISIONS_BESIDE, ids=[c[0] for c in DECISIONS_BESIDE])
def test_the_decision_endpoints_stay_off_the_client_facing_port(upstream: tuple[str, Seen], case: str, beside: bool, status: int) -> None:
    """They score any account the caller names and trust X-Forwarded-For: a client of the proxy
    could get anyone throttled or blocked."""
    scorer = RecordingScorer()
    app = build_proxy_app(ProxySettings(upstream=upstream[0], secret=SecretStr("k"), decisions_beside_upstream=beside), scorer, ACTIONS)  # type: ignore[arg-type]
    with serve_app(app) as url:
        body = {"texts": ["x"], "request_data": {"user_api_key_user_id": "acct_victim"}}
        r = httpx.post(url + "/beta/litellm_basic_guardrail_api", json=body, timeout=10)
    assert r.status_code == status
    assert [e.account_id for e in scorer.events] == (["acct_victim"] if beside else [])


def test_a_perturbed_answer_cut_short_by_the_upstream_is_a_502() -> None:
    """The answer is read whole before anything is sent: a cut there was the server's bare 500
    (SDKs retry it), where an upstream failure is the documented 502."""
    import socket

    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)

    def cut() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"choices":[')
            conn.close()

    threading.Thread(target=cut, daemon=True).start()
    try:
        with serve_app(build_proxy_app(ProxySettings(upstream=f"http://127.0.0.1:{port}", secret=SecretStr("k")), forced_scorer("perturb"), ACTIONS)) as url:
            r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-x"}, timeout=10)
    finally:
        listener.close()
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    "body, content_type, forwarded",
    [
        (json.dumps(CHAT).encode().replace(b'"', b'"\xff', 1), "application/json", False),
        (json.dumps(CHAT).encode() + b" x", "application/json", False),
        (__import__("gzip").compress(json.dumps(CHAT).encode()), "application/json", False),
        (json.dumps(CHAT).encode() + b" x", None, False),
        (json.dumps(CHAT).encode() + b" x", "text/plain", False),
        (b"\x00\x01 audio", "application/octet-stream", True),
    ],
    ids=["bad UTF-8", "data after the object", "compressed", "no Content-Type", "said to be text", "another format"],
)
def test_a_body_that_is_not_json_is_refused_not_forwarded(upstream: tuple[str, Seen], proxies: dict[str, str], body: bytes, content_type: str | None, forwarded: bool) -> None:
    """Unscorable, and a lenient upstream may read it anyway (Go's decoders ignore the
    Content-Type): before, it went up unscored. Only another format named plainly is forwarded."""
    seen = len(upstream[1].bodies) + len(upstream[1].headers)
    r = httpx.post(proxies["block"] + "/v1/chat/completions", content=body, headers={"authorization": "Bearer sk-x", **({"content-type": content_type} if content_type else {})}, timeout=10)
    if forwarded:
        assert r.status_code != 400
    else:
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert len(upstream[1].bodies) + len(upstream[1].headers) == seen, "the upstream was never called"


@pytest.mark.parametrize("coalesce", [32, 1])
async def test_the_decider_scores_requests_that_queue_together_as_if_one_by_one(coalesce: int) -> None:
    """Requests that arrive while the scorer is busy go through one `score_each` (the gateway
    paths share serving/coalesce.py with /score); each gets the score of one by one, and a
    request whose featurisation faults fails open alone."""
    bodies = [json.loads(line) for line in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]
    evs = [Event.model_validate({**bodies[i % len(bodies)], "request_id": f"d{i}", "account_id": f"acct{i % 4}", "ts": 1.7645e9 + i}) for i in range(40)]
    scorer = Scorer(ServingSettings(time_source="caller"))
    seen: list[int] = []
    each, step = scorer.score_each, scorer._step

    def recording(events: list[Event]) -> list[Score | Exception]:
        seen.append(len(events))
        return each(events)

    def faulty(event: Event, clock=None):  # noqa: ANN001, ANN202
        if event.request_id == "d7":
            raise RuntimeError("injected featurisation fault")
        return step(event, clock)

    scorer.score_each, scorer._step = recording, faulty  # type: ignore[method-assign]
    decider = Decider(scorer, coalesce)
    first = asyncio.create_task(decider.score(evs[0]))
    await asyncio.sleep(0)  # the first request's turn has started when the rest arrive
    got = [await first, *await asyncio.gather(*(decider.score(e) for e in evs[1:]))]
    reference = Scorer(ServingSettings(time_source="caller"))
    want = [reference.score(e) for e in evs if e.request_id != "d7"]
    # Turns in arrival order, each within the bound; with coalescing on, the 39 that arrived
    # during the first turn shared a few turns (how they split depends on the loop's schedule).
    assert sum(seen) == 40 and max(seen) <= coalesce and (len(seen) <= 4 if coalesce > 1 else seen == [1] * 40)
    assert got[7] is None
    kept = [g for i, g in enumerate(got) if i != 7]
    assert [g.action for g in kept] == [w.action for w in want]
    assert max(abs(g.risk - w.risk) for g, w in zip(kept, want)) < 1e-5
