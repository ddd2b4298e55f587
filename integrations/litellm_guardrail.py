"""Moat as a LiteLLM proxy guardrail (the `integrations` extra).

In the LiteLLM proxy's config.yaml (see deploy/litellm/config.yaml):

    guardrails:
      - guardrail_name: moat
        litellm_params:
          guardrail: moat.integrations.litellm_guardrail.MoatGuardrail
          mode: [pre_call, post_call]
          default_on: true
          api_base: http://moat:3000     # `moat serve`
          timeout_s: 0.05                # the budget; past it the request is allowed
          fail_open: true

Per request, `async_pre_call_hook` builds the contract Event from LiteLLM's request data and its
key metadata (account = the key's user, else team, else the keyed hash of LiteLLM's key hash;
never the raw key) and asks Moat (AsyncMoatClient, 50 ms, fail open by default):
  throttle -> HTTPException(429) with Retry-After; block -> HTTPException(403)
  perturb  -> the request's extraction knobs capped; then `async_post_call_success_hook` (and
              the streaming iterator hook) perturb the logprobs of the answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks
from litellm.types.utils import ChoiceLogprobs, Logprobs

from moat.models.events import Event
from moat.serving.actions import ActionSettings, InvalidRequest, perturb_request, reply_for
from moat.serving.client import AsyncMoatClient, ClientScore, ClientSettings, InvalidEvent
from moat.serving.proxy import FailOpenPerturber, Identity, IdentityResolver, ProxySettings, client_address, openai_event, response_perturber

log = logging.getLogger("moat.litellm")
STATE_KEY = "moat"  # under data["metadata"]: the decision, for the post-call hooks


def _identity(resolver: IdentityResolver, user_api_key_dict: Any, data: dict[str, Any]) -> Identity:
    token = getattr(user_api_key_dict, "token", None)  # LiteLLM's hash of the key, never the key
    key_id = resolver.key_id(token) if token else None
    # Not end_user_id: LiteLLM fills it from the request body's `user` field, which a client may
    # change on every request to be scored as a new account each time.
    account = next((v for v in (getattr(user_api_key_dict, name, None) for name in ("user_id", "team_id")) if isinstance(v, str) and v), None)
    raw_ip = (data.get("metadata") or {}).get("requester_ip_address")
    # With use_x_forwarded_for LiteLLM passes the raw header, whose leftmost entries are the
    # client's to write: read from the right at the trusted depth, as `moat proxy` does.
    ip = client_address(raw_ip, None, max(resolver.depth, 1)) if isinstance(raw_ip, str) else None
    return Identity((account or key_id or f"anon:{ip or 'unknown'}")[:256], key_id, ip)


FIT_MESSAGES = 64  # the newest turns kept when an event is cut to fit
FIT_CHARS = 8192  # characters kept of each text: the features read the newest text's first 4,096


def _fitted(event: Event) -> Event:
    """The event cut to fit Moat's body limit: the newest turns, each text's beginning."""
    update: dict[str, Any] = {}
    if event.messages is not None:
        update["messages"] = [m.model_copy(update={"content": m.content[:FIT_CHARS]}) for m in event.messages[-FIT_MESSAGES:]]
    if event.prompt is not None:
        update["prompt"] = event.prompt[:FIT_CHARS]
    return event.model_copy(update=update)


def _user_agent(data: dict[str, Any]) -> str | None:
    headers = (data.get("proxy_server_request") or {}).get("headers") or {}
    ua = headers.get("user-agent")
    return ua if isinstance(ua, str) else None


def _deny(guard: "MoatGuardrail", data: dict[str, Any], score: ClientScore, endpoint: str) -> dict[str, Any]:
    """Throttle (429 + Retry-After) and block (403), with the actions library's OpenAI error."""
    r = reply_for(score.action, guard.actions)
    if r is None:
        return data
    headers = {k: v for k, v in r.headers.items() if k.lower() == "retry-after"}
    raise HTTPException(status_code=r.status, detail=json.loads(r.body)["error"], headers=headers or None)


def _perturb(guard: "MoatGuardrail", data: dict[str, Any], score: ClientScore, endpoint: str) -> dict[str, Any]:
    try:
        capped = perturb_request(data, guard.actions.perturb, endpoint)
    except InvalidRequest as exc:
        raise HTTPException(status_code=400, detail={"error": str(exc)}) from exc
    # LiteLLM reads the dict it passed in on some paths and the returned one on others.
    data.clear()
    data.update(capped)
    return data


def _allow(guard: "MoatGuardrail", data: dict[str, Any], score: ClientScore, endpoint: str) -> dict[str, Any]:
    return data


# The one place an action word meets its behaviour in LiteLLM.
PRE_CALL: dict[str, Callable[["MoatGuardrail", dict[str, Any], ClientScore, str], dict[str, Any]]] = {
    "allow": _allow,
    "throttle": _deny,
    "perturb": _perturb,
    "block": _deny,
}


class MoatGuardrail(CustomGuardrail):
    def __init__(self, api_base: str | None = None, timeout_s: float | None = None, fail_open: bool | None = None, client: AsyncMoatClient | None = None, actions: ActionSettings | None = None, **kwargs: Any) -> None:
        overrides = {k: v for k, v in {"url": api_base, "timeout_s": timeout_s, "fail_open": fail_open}.items() if v is not None}
        self.client = client or AsyncMoatClient(ClientSettings(), **overrides)
        self.actions = actions or ActionSettings()
        # Keys are hashed with MOAT_PROXY_SECRET, so ids match those `moat proxy` would give.
        self.identity = IdentityResolver(ProxySettings())
        kwargs.setdefault("supported_event_hooks", [GuardrailEventHooks.pre_call, GuardrailEventHooks.post_call])
        super().__init__(**kwargs)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> dict | None:
        if not self.should_run_guardrail(data=data, event_type=GuardrailEventHooks.pre_call):
            return data
        try:
            who = _identity(self.identity, user_api_key_dict, data)
            rid = str(data.get("litellm_call_id") or uuid.uuid4().hex)
            endpoint = _endpoint(call_type, data)
            event = openai_event(data, endpoint, who, _user_agent(data), rid, time.time())
        except ValueError as exc:  # nothing Moat can read: LiteLLM validates the request itself
            log.info("request not scored: %s", str(exc).splitlines()[0])
            return data
        if event is None:
            return data
        try:
            score = await self.client.score(event)  # the client's budget and fail-open apply
        except InvalidEvent:
            # Over Moat's 1 MiB body limit: scored again cut to what the features read. Passed
            # on unscored, a long enough prompt was a way past any block.
            try:
                score = await self.client.score(_fitted(event))
            except InvalidEvent as exc:
                log.warning("request %s refused by Moat even cut down (%s): the fail mode decides", rid, exc)
                score = self.client.fallback(event, "status")
        data.setdefault("metadata", {})[STATE_KEY] = {"action": score.action, "risk": score.risk, "reasons": score.reasons}
        return PRE_CALL.get(score.action, _allow)(self, data, score, endpoint)

    def _perturber(self, data: dict[str, Any]) -> FailOpenPerturber | None:
        state = (data.get("metadata") or {}).get(STATE_KEY) or {}
        return response_perturber(self.actions.perturb, data) if state.get("action") == "perturb" else None

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        perturber = self._perturber(data)
        if perturber is not None and hasattr(response, "choices"):
            _perturb_choices(perturber, response)
        elif perturber is not None:
            _perturb_responses(perturber, response)
        return response

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any, request_data: dict) -> AsyncGenerator[Any, None]:
        perturber = self._perturber(request_data)  # one per request: positions run across chunks
        async for chunk in response:
            if perturber is not None and hasattr(chunk, "choices"):
                _perturb_choices(perturber, chunk)
            elif perturber is not None:
                _perturb_responses(perturber, chunk)
            yield chunk


# LiteLLM's call types and the OpenAI endpoint each stands for: what the event names and which
# fields `perturb` caps (a Responses request and an embeddings one both send `input`).
_ENDPOINTS = {
    "completion": "/v1/chat/completions", "acompletion": "/v1/chat/completions",
    "text_completion": "/v1/completions", "atext_completion": "/v1/completions",
    "responses": "/v1/responses", "aresponses": "/v1/responses",
    "embedding": "/v1/embeddings", "aembedding": "/v1/embeddings",
}


def _endpoint(call_type: Any, data: dict[str, Any]) -> str:
    """The endpoint a call type stands for. Another call type (speech, images, moderation) names
    itself, so `perturb` adds no field it would refuse; only without one does the body decide."""
    name = getattr(call_type, "value", call_type)  # a CallTypes member or its string
    if name in _ENDPOINTS:
        return _ENDPOINTS[name]
    if name:
        return f"/litellm/{name}"
    return "/v1/chat/completions" if "messages" in data else "/v1/completions"


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _text_parts(obj: Any) -> list[tuple[Any, tuple[int, int]]]:
    """Every output_text part under a Responses API answer or stream event, as LiteLLM builds
    them (its own and openai's pydantic objects, or dicts), with its (output, content) index."""
    if _field(obj, "part") is not None:  # response.content_part.done
        return [(_field(obj, "part"), (_field(obj, "output_index") or 0, _field(obj, "content_index") or 0))]
    if _field(obj, "item") is not None:  # response.output_item.done
        return [(p, (_field(obj, "output_index") or 0, j)) for j, p in enumerate(_field(_field(obj, "item"), "content") or [])]
    if _field(obj, "response") is not None:  # response.completed
        obj = _field(obj, "response")
    output = _field(obj, "output")
    return [(p, (i, j)) for i, item in enumerate(output if isinstance(output, list) else []) for j, p in enumerate(_field(item, "content") or [])]


# Stream events whose own `logprobs` are a part's: a delta continues the part, a done event
# carries all of it.
_OWN_LOGPROBS = {"response.output_text.delta": False, "response.output_text.done": True}


def _perturb_responses(perturber: FailOpenPerturber, obj: Any) -> None:
    """Perturb, in place, the logprobs of a Responses API answer or stream event."""
    kind = getattr(_field(obj, "type"), "value", _field(obj, "type"))  # LiteLLM's event types are enums
    if kind in _OWN_LOGPROBS:
        key = (_field(obj, "output_index") or 0, _field(obj, "content_index") or 0)
        _rewrite(perturber, obj, key, whole=_OWN_LOGPROBS[kind])
        return
    for part, key in _text_parts(obj):
        _rewrite(perturber, part, key, whole=True)


def _rewrite(perturber: FailOpenPerturber, holder: Any, key: tuple[int, int], whole: bool) -> None:
    """`holder.logprobs` (a dict's or a pydantic object's, entries of either kind) perturbed."""
    entries = _field(holder, "logprobs")
    if not isinstance(entries, list) or not entries:
        return
    try:
        plain = [e if isinstance(e, dict) else e.model_dump() for e in entries]
        new = perturber.part({"logprobs": plain}, key, whole=whole)["logprobs"]
        kind = type(entries[0])
        values = [e if kind is dict else kind.model_validate(e) for e in new]
    except (AttributeError, TypeError, ValueError, OverflowError):
        # Entries Moat cannot read: dropped, not passed on exact, and not a failed call.
        log.warning("Responses API logprobs the guardrail cannot read were dropped")
        values = []
    if isinstance(holder, dict):
        holder["logprobs"] = values
    else:
        setattr(holder, "logprobs", values)


def _perturb_choices(perturber: FailOpenPerturber, response: Any) -> None:
    """Perturb the logprobs of a ModelResponse or ModelResponseStream in place."""
    body = response.model_dump()
    new = perturber.body(body)
    for choice, perturbed in zip(response.choices, new.get("choices") or []):
        logprobs = perturbed.get("logprobs")
        if isinstance(logprobs, dict) and logprobs.get("content") is not None:
            choice.logprobs = ChoiceLogprobs(**logprobs)
        elif isinstance(logprobs, dict) and logprobs.get("token_logprobs") is not None:
            # A (legacy) text completion: tokens, token_logprobs, top_logprobs, text_offset.
            choice.logprobs = Logprobs(**{k: logprobs.get(k) for k in Logprobs.model_fields})
