"""The LiteLLM guardrail with the real litellm package: its hook types (UserAPIKeyAuth,
DualCache, ModelResponse and the streaming wrapper from a real litellm.acompletion against the
fake upstream) and real HTTP to Moat's scoring routes (service.build_app, uvicorn thread, a
Scorer whose thresholds force each action).

The LiteLLM proxy itself does not run here: `litellm[proxy]` needs the `litellm-proxy`
distribution of the same version, which the package index this project installs from does not
carry; the hooks are therefore driven the way the proxy drives them (pre_call, the upstream
call, post_call / the streaming iterator)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import litellm
import pytest
from fastapi import HTTPException
from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth
from pydantic import SecretStr

from moat.integrations.litellm_guardrail import STATE_KEY, MoatGuardrail
from moat.models.events import Event
from moat.serving import service
from moat.serving.actions.settings import ActionSettings, PerturbSettings, ThrottleSettings
from moat.serving.client import AsyncMoatClient
from moat.serving.scorer import Score
from moat.serving.settings import ServingSettings
from tests.serving.fake_upstream import LOGPROBS, THRESHOLDS, TOKENS, Seen, build_upstream, forced_scorer, serve_app

ACTIONS = ActionSettings(perturb=PerturbSettings(secret=SecretStr("t"), max_top_logprobs=1), throttle=ThrottleSettings(retry_after_s=13))
MODE = ["pre_call", "post_call"]  # the config's `mode`, as the proxy passes it
KEY = UserAPIKeyAuth(token="88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b", user_id="user-7", api_key="sk-raw-litellm-key")


class Recording:
    def __init__(self, action: str) -> None:
        self.inner = forced_scorer(action)
        self.model_version = self.inner.model_version
        self.events: list[Event] = []

    def score_many(self, events: list[Event]) -> list[Score]:  # batch calls
        self.events += events
        return self.inner.score_many(events)

    def score_each(self, events: list[Event]) -> list[Score | Exception]:  # single calls
        self.events += events
        return self.inner.score_each(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Metrics:
    def error(self, kind: str) -> None:
        pass

    def observe(self, scores: Any, seconds: float, scorer: Any) -> None:
        pass

    def scored_together(self, calls: int) -> None:
        pass


@dataclass
class Service:
    """What service.build_app reads of MoatService."""

    scorer: Recording
    settings: ServingSettings = field(default_factory=ServingSettings)
    metrics: Metrics = field(default_factory=Metrics)
    refrozen: bool = False


@pytest.fixture(scope="module")
def moats() -> Iterator[dict[str, tuple[str, Recording]]]:
    out = {}
    servers = []
    for action in THRESHOLDS:
        svc = Service(Recording(action))
        server = serve_app(service.build_app(lambda svc=svc: svc))
        servers.append(server)
        out[action] = (server.__enter__(), svc.scorer)
    yield out
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    with serve_app(build_upstream(seen)) as url:
        yield url, seen


def guard(url: str, fail_open: bool = True) -> MoatGuardrail:
    # A generous budget here: these tests check the decisions, not the machine's speed.
    client = AsyncMoatClient(url=url, timeout_s=5.0, fail_open=fail_open)
    return MoatGuardrail(guardrail_name="moat", default_on=True, event_hook=MODE, client=client, actions=ACTIONS)


def request(stream: bool = False) -> dict[str, Any]:
    """Request data as the LiteLLM proxy hands it to pre_call hooks."""
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": "Say hello"}],
        "logprobs": True,
        "top_logprobs": 5,
        "logit_bias": {"42": 100},
        "stream": stream,
        "litellm_call_id": "call-123",
        "metadata": {"requester_ip_address": "203.0.113.7"},
        "proxy_server_request": {"headers": {"user-agent": "OpenAI/Python 1.0"}},
    }


async def through_litellm(g: MoatGuardrail, upstream: str, stream: bool) -> tuple[str, list[float]]:
    """pre_call -> litellm.acompletion against the fake upstream -> post_call, as the proxy runs them."""
    data = await g.async_pre_call_hook(KEY, DualCache(), request(stream), "acompletion")
    call = {k: v for k, v in data.items() if k not in ("metadata", "proxy_server_request", "litellm_call_id")}
    response = await litellm.acompletion(**{**call, "model": "openai/fake"}, api_base=upstream + "/v1", api_key="sk-upstream")
    if not stream:
        response = await g.async_post_call_success_hook(data, KEY, response)
        return response.choices[0].message.content, [e.logprob for e in response.choices[0].logprobs.content]
    text, logprobs = "", []
    async for chunk in g.async_post_call_streaming_iterator_hook(KEY, response, data):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            logprobs += [e.logprob for e in (choice.logprobs.content if choice.logprobs and choice.logprobs.content else [])]
    return text, logprobs


@pytest.mark.parametrize("stream", [False, True])
async def test_allow_passes_logprobs_untouched(moats, upstream, stream: bool) -> None:
    text, logprobs = await through_litellm(guard(moats["allow"][0]), upstream[0], stream)
    assert text == "".join(TOKENS) and logprobs == LOGPROBS
    assert upstream[1].bodies[-1]["top_logprobs"] == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_perturb_changes_what_litellm_returns(moats, upstream, stream: bool) -> None:
    text, logprobs = await through_litellm(guard(moats["perturb"][0]), upstream[0], stream)
    assert text == "".join(TOKENS)
    assert len(logprobs) == len(LOGPROBS) and logprobs != LOGPROBS
    assert all(abs(v * 10 - round(v * 10)) < 1e-6 for v in logprobs)  # the 0.1-nat grid
    sent = upstream[1].bodies[-1]
    assert sent["top_logprobs"] == 1 and "logit_bias" not in sent  # capped before it left


@pytest.mark.parametrize("action, status, retry_after", [("throttle", 429, "13"), ("block", 403, None)])
async def test_denials_raise_http_exceptions(moats, action: str, status: int, retry_after: str | None) -> None:
    with pytest.raises(HTTPException) as info:
        await guard(moats[action][0]).async_pre_call_hook(KEY, DualCache(), request(), "acompletion")
    assert info.value.status_code == status
    assert (info.value.headers or {}).get("Retry-After") == retry_after


async def test_the_event_carries_identity_not_the_key(moats) -> None:
    url, scorer = moats["allow"]
    data = await guard(url).async_pre_call_hook(KEY, DualCache(), request(), "acompletion")
    e = scorer.events[-1]
    assert (e.account_id, e.client_ip, e.user_agent, e.request_id) == ("user-7", "203.0.113.7", "OpenAI/Python 1.0", "call-123")
    assert e.api_key_id.startswith("key_") and "sk-raw-litellm-key" not in e.model_dump_json() and KEY.token not in e.model_dump_json()
    assert e.params.top_logprobs == 5 and e.params.logit_bias == {"42": 100.0}
    assert data["metadata"][STATE_KEY]["action"] == "allow"


@pytest.mark.parametrize("fail_open, outcome", [(True, "allow"), (False, 403)])
async def test_unreachable_moat_follows_the_fail_mode(fail_open: bool, outcome: Any) -> None:
    g = guard("http://127.0.0.1:9", fail_open=fail_open)
    if outcome == "allow":
        data = await g.async_pre_call_hook(KEY, DualCache(), request(), "acompletion")
        assert data["metadata"][STATE_KEY]["action"] == "allow" and data["top_logprobs"] == 5
    else:
        with pytest.raises(HTTPException) as info:
            await g.async_pre_call_hook(KEY, DualCache(), request(), "acompletion")
        assert info.value.status_code == outcome


async def test_guardrail_not_requested_is_skipped(moats) -> None:
    g = MoatGuardrail(guardrail_name="moat", default_on=False, event_hook=MODE, client=AsyncMoatClient(url=moats["block"][0], timeout_s=5.0), actions=ACTIONS)
    data = request()
    assert await g.async_pre_call_hook(KEY, DualCache(), data, "acompletion") is data  # not in data["guardrails"]


# (case, the caller's LiteLLM key, requester_ip_address, the account and address Moat scores)
IDENTITIES = [
    ("a user's key", UserAPIKeyAuth(token="t1", user_id="user-7", end_user_id="chosen-by-client"), "203.0.113.7", "user-7", "203.0.113.7"),
    # end_user_id comes from the body's `user`: a new one per request would be a new account each time.
    ("a key without user or team: the key, not the client's end-user id", UserAPIKeyAuth(token="t1", end_user_id="chosen-by-client"), "203.0.113.7", "key", "203.0.113.7"),
    # With use_x_forwarded_for LiteLLM passes the raw header; over 64 characters it made the event
    # invalid and the request went unscored. Its leftmost entries are the client's to write.
    ("a raw X-Forwarded-For: the entry the nearest proxy wrote", UserAPIKeyAuth(token="t1", user_id="user-7"), "6.6.6.6, " * 6 + "198.51.100.7", "user-7", "198.51.100.7"),
    ("not an address: left out", UserAPIKeyAuth(token="t1", user_id="user-7"), "unknown", "user-7", None),
]


@pytest.mark.parametrize("case, key, ip, account, client_ip", IDENTITIES, ids=[c[0] for c in IDENTITIES])
async def test_the_account_is_never_the_clients_to_choose(moats, case: str, key: UserAPIKeyAuth, ip: str, account: str, client_ip: str | None) -> None:
    url, scorer = moats["allow"]
    data = request()
    data["metadata"] = {"requester_ip_address": ip}
    data["user"] = "chosen-by-client"
    await guard(url).async_pre_call_hook(key, DualCache(), data, "acompletion")
    e = scorer.events[-1]
    assert (e.account_id if account != "key" else "key" if e.account_id == e.api_key_id else e.account_id, e.client_ip) == (account, client_ip)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_prompt_over_moats_body_limit_is_scored_cut_down(moats, fail_open: bool) -> None:
    """Moat answers 413 to an event over its 1 MiB body limit. Let out as an error it failed the
    user's call; passed on unscored, a long enough prompt was a way past any block. It is scored
    again cut to what the features read, so the block Moat blocks it."""
    url, scorer = moats["block"]
    data = request()
    data["messages"] = [{"role": "user", "content": "x" * (1 << 20)}, {"role": "user", "content": "and more"}]
    with pytest.raises(HTTPException) as info:
        await guard(url, fail_open=fail_open).async_pre_call_hook(KEY, DualCache(), data, "acompletion")
    assert info.value.status_code == 403
    assert [len(m.content) for m in scorer.events[-1].messages] == [8192, len("and more")]


async def test_perturb_reaches_a_text_completions_logprobs() -> None:
    """Legacy completions carry tokens / token_logprobs / top_logprobs: they were perturbed, then
    never written back, so the client got the upstream's exact values."""
    from litellm.types.utils import Logprobs, TextChoices, TextCompletionResponse

    g = guard("http://127.0.0.1:9")
    data = {"model": "m", "prompt": "Say hi", "logprobs": 1, "metadata": {STATE_KEY: {"action": "perturb"}}}
    exact = -0.0123456789
    resp = TextCompletionResponse(choices=[TextChoices(index=0, text=" Hello", finish_reason="stop", logprobs=Logprobs(text_offset=[0], token_logprobs=[exact], tokens=[" Hello"], top_logprobs=[{" Hello": exact}]))])
    out = await g.async_post_call_success_hook(data, KEY, resp)
    got = out.choices[0].logprobs
    assert got.tokens == [" Hello"] and got.token_logprobs != [exact] and list(got.top_logprobs[0].values()) != [exact]


def responses_request(stream: bool) -> dict[str, Any]:
    return {
        "model": "fake", "input": [{"role": "user", "content": "Say hello"}], "include": ["message.output_text.logprobs"], "top_logprobs": 5, "stream": stream,
        "litellm_call_id": "call-r", "metadata": {"requester_ip_address": "203.0.113.7"}, "proxy_server_request": {"headers": {"user-agent": "OpenAI/Python 1.0"}},
    }


async def responses_through_litellm(g: MoatGuardrail, upstream: str, stream: bool) -> tuple[list[list[float]], dict[str, Any]]:
    """pre_call -> litellm.aresponses against the fake upstream -> post_call: the logprob values
    of every output_text part the client receives (in a stream: the deltas' together, then each
    event that carries a whole part), and the request the upstream got. The model is one LiteLLM
    streams from the upstream as it comes (for a model it does not know, it rebuilds the stream
    from the whole answer, without the deltas' logprobs)."""
    data = await g.async_pre_call_hook(KEY, DualCache(), responses_request(stream), "aresponses")
    call = {k: v for k, v in data.items() if k not in ("metadata", "proxy_server_request", "litellm_call_id")}
    response = await litellm.aresponses(**{**call, "model": "openai/gpt-4o"}, api_base=upstream + "/v1", api_key="sk-upstream")
    if not stream:
        response = await g.async_post_call_success_hook(data, KEY, response)
        return [[e.logprob for e in response.output[0].content[0].logprobs]], data
    deltas: list[float] = []
    seen = []
    async for event in g.async_post_call_streaming_iterator_hook(KEY, response, data):
        dumped = event.model_dump()
        kind = str(getattr(event.type, "value", event.type))
        if kind == "response.output_text.delta":
            deltas += [e["logprob"] for e in dumped.get("logprobs") or []]
        elif kind == "response.output_text.done":
            seen.append([e["logprob"] for e in dumped.get("logprobs") or []])
        parts = [dumped.get("part")] if dumped.get("part") else (dumped.get("item") or {}).get("content") or [p for o in (dumped.get("response") or {}).get("output") or [] for p in o.get("content") or []]
        seen += [[e["logprob"] for e in p["logprobs"]] for p in parts if p and p.get("logprobs") and p.get("text")]
    assert deltas, "LiteLLM streamed this model itself: its deltas carried logprobs"
    return [deltas] + seen, data


@pytest.mark.parametrize("stream", [False, True])
async def test_perturb_reaches_the_responses_api_through_litellm(moats, upstream, stream: bool) -> None:
    exact, _ = await responses_through_litellm(guard(moats["allow"][0]), upstream[0], stream)
    assert exact and all(values == LOGPROBS for values in exact)
    perturbed, data = await responses_through_litellm(guard(moats["perturb"][0]), upstream[0], stream)
    assert perturbed and all(len(v) == len(LOGPROBS) and v != LOGPROBS and all(abs(x * 10 - round(x * 10)) < 1e-6 for x in v) for v in perturbed)
    assert len({tuple(v) for v in perturbed}) == 1  # every event carries the same values
    sent = upstream[1].bodies[-1]
    assert sent["top_logprobs"] == 1 and "max_tokens" not in sent and "max_completion_tokens" not in sent
    assert data["max_output_tokens"] == ActionSettings().perturb.max_tokens
