"""`moat proxy`: an OpenAI-compatible reverse proxy that scores every request and applies the
action, so an operator gets Moat by pointing clients at it instead of at the real upstream.

Per request: identity from the request (account = keyed hash of the bearer key, or a configured
header; address = the peer or a trusted X-Forwarded-For hop), a contract Event from the OpenAI
body, the same in-process Scorer `moat serve` runs, then the action:
  allow    -> forwarded untouched; the answer, SSE included, is relayed byte for byte
  throttle -> 429 + Retry-After, OpenAI error JSON (the SDKs raise RateLimitError)
  block    -> 403, OpenAI error JSON (PermissionDeniedError); never 5xx, which clients retry
  perturb  -> the body's extraction knobs capped, forwarded, logprobs of the answer perturbed
              (and its text watermarked, when MOAT_WATERMARK_ENABLED is set)
Upstream answers that are not 2xx pass through unchanged. Any fault of Moat's own (identity,
parsing, scoring, perturbing) fails open: the request is forwarded as if allowed.

The same process also serves the gateway decision endpoints over the same Scorer (see
ext_authz.py): Envoy's ext_authz under /ext_authz/ and LiteLLM's Generic Guardrail API.
Raw API keys are hashed on arrival and never stored or logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.responses import Response

from moat.models.events import MAX_LOGIT_BIAS, MAX_OUTPUT_TOKENS, SEED_RANGE, Event
from moat.models.memory_store import MemoryStore
from moat.serving.actions import (
    LOGPROBS,
    ActionSettings,
    InvalidRequest,
    PerturbSettings,
    Reply,
    ResponsePerturber,
    SSETransformer,
    generates,
    invalid_request,
    perturb_request,
    reply_for,
    request_seed,
)
from moat.serving.actions.watermark import TextWatermarker, WatermarkSettings
from moat.serving.coalesce import Coalescer
from moat.serving.scorer import Score, Scorer
from moat.serving.upstream import HOP, Answer, Pool, UpstreamError

log = logging.getLogger("moat.proxy")

class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_PROXY_", extra="ignore")

    upstream: str | None = Field(default=None, description="base URL of the real OpenAI-compatible API; unset: only the decision endpoints are served")
    secret: SecretStr | None = Field(default=None, description="HMAC key for hashing API keys; unset: a random key per process (ids then differ across restarts and replicas)")
    account_header: str = Field(default="authorization", description="header naming the account; `authorization`: the keyed hash of the bearer key")
    forwarded_depth: int = Field(default=0, ge=0, description="trusted proxies in front of Moat: the client address is the X-Forwarded-For entry this many from the right; 0: the peer")
    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="largest request body read; larger ones get 413")
    upstream_timeout_s: float = Field(default=600.0, gt=0, description="read timeout towards the upstream; generations can be slow")
    coalesce: int = Field(default=32, ge=1, description="requests that arrived while the scorer was busy, scored together in one network batch (none waits for others to arrive); 1 scores each alone")
    decisions_beside_upstream: bool = Field(
        default=False,
        description="with an upstream, also serve the decision endpoints on this port; they trust X-Forwarded-For and the account a caller names, so only where clients cannot reach them",
    )


# ---------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    account_id: str
    api_key_id: str | None
    client_ip: str | None


class IdentityResolver:
    """Who sent a request, without keeping anything secret: keys become keyed hashes at once."""

    def __init__(self, settings: ProxySettings) -> None:
        self._key = settings.secret.get_secret_value().encode() if settings.secret else secrets.token_bytes(32)
        self.account_header = settings.account_header.lower()
        self.depth = settings.forwarded_depth

    def key_id(self, raw_key: str) -> str:
        return "key_" + hmac.new(self._key, raw_key.encode(), hashlib.sha256).hexdigest()[:32]

    def resolve(self, headers: Mapping[str, str], peer: str | None) -> Identity:
        ip = client_address(headers.get("x-forwarded-for"), peer, self.depth)
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        key_id = self.key_id(bearer) if bearer else None
        if self.account_header == "authorization":
            account = key_id
        else:
            account = (headers.get(self.account_header) or "").strip()[:256] or None
        # No credential at all: the address is the only identity there is.
        return Identity(account or f"anon:{ip or 'unknown'}", key_id, ip)


def client_address(forwarded_for: str | None, peer: str | None, depth: int) -> str | None:
    """Each trusted proxy appends the address it saw, so the entry `depth` from the right was
    written by the outermost one we trust; entries left of it are the client's to forge."""
    if depth == 0 or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    if not hops:
        return peer
    candidate = hops[-depth] if len(hops) >= depth else hops[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer


# ---------------------------------------------------------------- OpenAI body -> Event

_ROLES = {"system", "developer", "user", "assistant", "tool"}
_ROLE_ALIASES = {"function": "tool"}
# Sampling parameters read into the Event, clipped into the contract's ranges: a value outside
# them is the upstream's to reject, and must not make a request unscorable.
_FLOATS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
_INTS = {"max_tokens": (1, MAX_OUTPUT_TOKENS), "n": (1, 128), "top_logprobs": (0, 20), "seed": SEED_RANGE}
MAX_TEXT_CHARS = 1 << 20  # per message or prompt: features read far less, and the contract bounds it


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: only text carries extraction signal here
        content = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content[:MAX_TEXT_CHARS] if isinstance(content, str) else ""


def _role(value: Any) -> str:
    # Any other value (a list, a number) reads as a user turn: the request is still scored.
    role = _ROLE_ALIASES.get(value, value) if isinstance(value, str) else None
    return role if role in _ROLES else "user"


def _clip(value: Any, lo: float | None, hi: float | None, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind is float and isinstance(value, int):
        # JSON allows a 400-digit integer, which float() cannot hold: it is out of every range
        # here, so it saturates and is clipped like any other out-of-range value.
        value = max(min(value, 10**308), -(10**308))
    v = kind(value)
    if lo is not None:
        v = max(v, kind(lo))
    if hi is not None:
        v = min(v, kind(hi))
    return v


def _params(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (lo, hi) in _FLOATS.items():
        out[name] = _clip(body.get(name), lo, hi, float)
    raw = dict(body)
    if raw.get("max_tokens") is None:  # chat's newer name, and the Responses API's
        raw["max_tokens"] = next((body[n] for n in ("max_completion_tokens", "max_output_tokens") if body.get(n) is not None), None)
    include = body.get("include")
    if isinstance(body.get("logprobs"), int) and not isinstance(body.get("logprobs"), bool):
        raw["top_logprobs"] = body["logprobs"]  # legacy completions: logprobs=k asks for k alternatives
        out["logprobs"] = True
    elif isinstance(body.get("logprobs"), bool):
        out["logprobs"] = body["logprobs"]
    elif isinstance(include, list) and LOGPROBS in include:
        out["logprobs"] = True  # the Responses API asks for logprobs by naming them in `include`
    for name, (lo, hi) in _INTS.items():
        out[name] = _clip(raw.get(name), lo, hi, int)
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        numeric = [(str(k), c) for k, v in bias.items() if (c := _clip(v, -100.0, 100.0, float)) is not None]
        out["logit_bias"] = dict(numeric[:MAX_LOGIT_BIAS])
    stop = body.get("stop")
    if isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        out["stop"] = stop if isinstance(stop, str) else stop[:16]
    return {k: v for k, v in out.items() if v is not None}


# Where a generation request's text is when it is not a plain prompt or input.
_ELSEWHERE = ("prompt", "input", "instructions", "previous_response_id", "conversation")


def _elsewhere(body: Mapping[str, Any]) -> str:
    """Those fields as canonical JSON: two requests read the same only when they say the same
    (a constant such as an empty prompt made every such request a near-duplicate of the last)."""
    found = {k: body[k] for k in _ELSEWHERE if body.get(k) not in (None, "", [], {})}
    return json.dumps(found, sort_keys=True, ensure_ascii=False, default=str) if found else ""


def openai_event(body: Any, endpoint: str, who: Identity, user_agent: str | None, request_id: str, ts: float) -> Event | None:
    """The contract Event of an OpenAI-style request body, or None when it carries no text to
    score (a model listing, a file upload)."""
    if not isinstance(body, dict):
        return None
    messages = prompt = None
    turns = body.get("messages")
    if not isinstance(turns, list) and isinstance(body.get("input"), list):
        # The Responses API's input given as a conversation: message items carry a role; a
        # tool call's output carries none and is left out.
        turns = [m for m in body["input"] if isinstance(m, dict) and "role" in m] or None
    if isinstance(turns, list):
        messages = [
            {"role": _role(m.get("role")), "content": _text(m.get("content"))}
            for m in turns[:1024]
            if isinstance(m, dict)
        ]
    else:
        # Completions' prompt; embeddings and responses use `input` (the Responses API's
        # `prompt` is a stored template's reference, not text).
        raw = body.get("prompt") if isinstance(body.get("prompt"), (str, list)) else body.get("input")
        if isinstance(raw, list):
            raw = "\n".join(p for p in raw if isinstance(p, str))
        prompt = _text(raw) if isinstance(raw, str) else None
        if not prompt and generates(endpoint):
            # A generation whose text is not plainly in the body (a stored template and its
            # variables, tool outputs, a stored conversation) is scored all the same, so that
            # it meets the account's decision, on what the body does say.
            prompt = _text(_elsewhere(body))
    if messages is None and prompt is None:
        return None
    model = body.get("model")
    fields = {
        "request_id": request_id[:128],
        "ts": ts,
        "account_id": who.account_id,
        "api_key_id": who.api_key_id,
        "client_ip": who.client_ip,
        "user_agent": user_agent[:1024] if user_agent else None,
        "endpoint": endpoint[:256],
        "model": model[:256] if isinstance(model, str) else None,
        "messages": messages,
        "prompt": prompt,
        "params": _params(body),
    }
    # The contract tells an absent field from a null one: leave out what the request lacks.
    present = {k: v for k, v in fields.items() if v is not None}
    try:
        return Event.model_validate(present)
    except ValidationError as exc:
        # Still score who sent it and what it says: an unscorable request is forwarded, so a
        # parameter the contract refuses must not be a way past Moat.
        log.info("request %s: %s; scoring it without its parameters", request_id, str(exc).splitlines()[0])
        return Event.model_validate({k: v for k, v in present.items() if k not in ("params", "model", "user_agent")})


# ---------------------------------------------------------------- scoring


class Decider:
    """The in-process Scorer. With the memory store it runs on the event loop: one call costs
    well under a millisecond, less than a hop to a worker thread and back (which also waits out
    GIL switch intervals under load). A store that waits on the network (Redis) would stall
    every other request on the loop meanwhile, so its calls go to one worker thread, which also
    keeps the Scorer's state on one thread. Requests that arrive while the scorer is busy are
    scored together, up to `coalesce` at a time (serving/coalesce.py), with the scores of one by
    one. Every fault becomes None (the caller fails open); one request's fault is its own."""

    def __init__(self, scorer: Scorer, coalesce: int = 32) -> None:
        self.scorer = scorer
        store = getattr(scorer, "store", None)
        self._worker = None if store is None or isinstance(store, MemoryStore) else ThreadPoolExecutor(max_workers=1, thread_name_prefix="moat-score")
        self._calls: Coalescer[Event, Score] = Coalescer(coalesce, self._turn)

    async def score(self, event: Event) -> Score | None:
        try:
            return await self._calls.submit(event)
        except Exception:  # a scoring fault must not stop traffic: fail open
            log.exception("scoring request %s failed; failing open", event.request_id)
            return None

    async def _turn(self, events: list[Event]) -> list[Score | Exception]:
        if self._worker is None:
            return self.scorer.score_each(events)
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.scorer.score_each, events)


def request_id(headers: Mapping[str, str]) -> str:
    rid = (headers.get("x-request-id") or "").strip()
    return rid[:128] if rid else uuid.uuid4().hex


# ---------------------------------------------------------------- the ASGI edge
#
# The proxy route is plain ASGI, not a Starlette route: the framework's middleware stack,
# Request object and StreamingResponse (a task group per answer, and a thread hop to release the
# upstream connection) cost about 0.4 ms of CPU per request, as much as the Scorer's median.

Headers = list[tuple[bytes, bytes]]
# Identity and the Event read only these; the rest of the headers are forwarded as they came.
_READ = frozenset({b"authorization", b"x-forwarded-for", b"user-agent", b"x-request-id"})
# Answers up to this size are read whole and sent in one piece; larger ones, and any without a
# Content-Length (SSE, chunked), are relayed chunk by chunk as they arrive.
WHOLE_BODY_BYTES = 1 << 20


@dataclass
class Call:
    """One proxied request: what arrived, and what Moat decided."""

    method: str
    target: str  # the path and query exactly as the client sent them
    path: str
    headers: Headers  # as received, names lower-case (ASGI)
    peer: str | None
    body: bytes
    parsed: Any = None  # the JSON body, or None when it is not JSON
    score: Score | None = None
    refused: str | None = None  # why a body that says it is JSON is answered 400 unread


def plainly_not_json(content_type: str | None) -> bool:
    """A Content-Type that names another format (a form, a file upload, audio): such a body is
    forwarded unscored. Anything else, no type included, is read as JSON."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media.startswith(("multipart/", "audio/", "image/", "video/")) or media in ("application/x-www-form-urlencoded", "application/octet-stream")


def read_json(body: bytes, content_type: str | None) -> tuple[Any, str | None]:
    """The JSON body (None when there is none, or it is not JSON), and why the body is refused:
    one that does not plainly name another format and is not JSON (bad UTF-8, data after the
    object, a compressed body) cannot be scored, while a lenient upstream may still read it
    (Go decoders ignore the Content-Type and stop after one value), so it is answered 400 and
    never forwarded unscored."""
    if not body:
        return None, None
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, None if plainly_not_json(content_type) else f"request body is not valid JSON ({str(exc).splitlines()[0][:120]})"
    try:
        json.loads(body)
    except ValueError as exc:
        return f"request body is not valid JSON ({str(exc).splitlines()[0][:120]})"
    return None


def _call(scope: dict[str, Any], body: bytes) -> Call:
    path = scope["path"]
    raw = scope.get("raw_path") or path.encode()
    query = scope.get("query_string") or b""
    target = (raw + b"?" + query if query else raw).decode("latin-1")
    client = scope.get("client")
    return Call(scope["method"], target, path, scope["headers"], client[0] if client else None, body)


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody reads an answer."""


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None when it exceeds `limit`."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Any, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_headers(body: bytes, extra: Mapping[str, str] | None = None) -> Headers:
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return out + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items() if k.lower() not in ("content-type", "content-length")]


async def send_reply(send: Any, r: Reply) -> None:
    """An answer of the actions library (throttle, block, a 400)."""
    await _send(send, r.status, _json_headers(r.body, r.headers), r.body)


async def send_error(send: Any, status: int, message: str, code: str) -> None:
    """The proxy's own answers (413: body too large; 502: upstream unreachable) in OpenAI's
    error shape. The actions' answers come from the actions library (`denial`)."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error", "param": None, "code": code}}).encode()
    await _send(send, status, _json_headers(body), body)


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def relay_stream(receive: Any, send: Any, chunks: AsyncIterator[bytes]) -> None:
    """Send each chunk as it comes, and stop reading the upstream when the client leaves (the
    server drops writes to a closed connection silently, and a generation can run for minutes)."""
    watch = asyncio.ensure_future(_until_disconnect(receive))
    try:
        async for chunk in chunks:
            if watch.done():
                return
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watch.cancel()


# ---------------------------------------------------------------- the upstream


class Upstream:
    """The connection pool to the real API (serving/upstream.py), made on first use: it belongs
    to the event loop that serves."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        Pool(base_url)  # a malformed URL fails here, at start, not on the first request
        self._pool: Pool | None = None

    async def open(self, call: Call, body: bytes, identity_encoding: bool) -> Answer | None:
        """The upstream's answer, its body not yet read; None when the upstream is unreachable."""
        if self._pool is None:
            self._pool = Pool(self.base_url, read_timeout_s=self.timeout_s)
        headers = call.headers
        if identity_encoding:  # Moat rewrites this answer, so it must arrive uncompressed
            headers = [(k, v) for k, v in headers if k != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
        try:
            return await self._pool.request(call.method, call.target.encode("latin-1"), headers, body)
        except UpstreamError as exc:  # the upstream's fault, not Moat's: a gateway's 502
            log.warning("upstream unreachable for %s %s: %s", call.method, call.path, exc)
            return None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _answer_headers(up: Answer, keep_length: bool) -> Headers:
    """The upstream's headers bar hop-by-hop ones; Content-Length kept only for bytes relayed as
    they came (an answer Moat rewrote has a length of its own)."""
    out = []
    for k, v in up.raw_headers:
        name = k.lower()
        if name not in HOP or (keep_length and name == b"content-length"):
            out.append((name, v))
    return out


async def relay(receive: Any, send: Any, up: Answer) -> None:
    """The answer exactly as it came: status, headers (bar hop-by-hop) and raw bytes. Its
    connection goes back to the pool when it was read to its end; otherwise (the client left,
    a fault) it is closed, which also tells the upstream to stop generating."""
    try:
        await send({"type": "http.response.start", "status": up.status, "headers": _answer_headers(up, keep_length=True)})
        length = up.content_length
        if length is not None and length <= WHOLE_BODY_BYTES and "text/event-stream" not in (up.header("content-type") or ""):
            await send({"type": "http.response.body", "body": await up.read()})
        else:
            await relay_stream(receive, send, up.chunks())
    finally:
        up.release()


# ---------------------------------------------------------------- actions


def openai_error(status: int, message: str, code: str) -> Response:
    """The proxy's own error shape as a Starlette response (for Starlette-served endpoints)."""
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error", "param": None, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def reply(r: Reply) -> Response:
    """An answer of the actions library (throttle, block, a 400) as a Starlette response."""
    return Response(r.body, status_code=r.status, headers=r.headers)


def denial(action: str, settings: ActionSettings) -> Response | None:
    """The answer that replaces forwarding for `action` (throttle: 429, block: 403), or None;
    as a Starlette response, for the decision endpoints."""
    r = reply_for(action, settings)
    return reply(r) if r is not None else None


class FailOpenPerturber(ResponsePerturber):
    """A body the perturber cannot read (a malformed logprobs entry) goes back as it came."""

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().body(body)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            log.warning("response perturbation failed on a malformed body; passing it unchanged")
            return body


def response_perturber(settings: PerturbSettings, request_body: dict[str, Any], watermark: WatermarkSettings | None = None) -> FailOpenPerturber:
    """The logprob perturber of one request, with the keyed text watermark when it is enabled."""
    marker = TextWatermarker.from_settings(watermark) if watermark is not None and watermark.enabled else None
    return FailOpenPerturber(request_seed(settings.secret.get_secret_value().encode(), request_body), settings, watermark=marker)


class ActionHandler(Protocol):
    async def respond(self, proxy: "Proxy", call: Call, receive: Any, send: Any) -> None: ...


class Forward:
    async def respond(self, proxy: "Proxy", call: Call, receive: Any, send: Any) -> None:
        up = await proxy.upstream.open(call, call.body, identity_encoding=False)
        if up is None:
            return await send_error(send, 502, "upstream unreachable", "upstream_error")
        await relay(receive, send, up)


class Deny:
    """Throttle and block: the actions library's answer, and nothing forwarded."""

    def __init__(self, action: str) -> None:
        self.action = action

    async def respond(self, proxy: "Proxy", call: Call, receive: Any, send: Any) -> None:
        r = reply_for(self.action, proxy.actions)
        if r is None:
            return await Forward().respond(proxy, call, receive, send)
        await send_reply(send, r)


class Perturb:
    """Cap what the request may extract, forward it, then perturb the logprobs (and, when the
    watermark is enabled, the text) of a successful answer, whole or as SSE chunks. A body that
    is not a JSON object is forwarded as it came (there is nothing to cap, and the upstream
    answers it)."""

    async def respond(self, proxy: "Proxy", call: Call, receive: Any, send: Any) -> None:
        if not isinstance(call.parsed, dict):
            return await Forward().respond(proxy, call, receive, send)
        settings = proxy.actions.perturb
        try:
            body = json.dumps(perturb_request(call.parsed, settings, call.path)).encode()
        except InvalidRequest as exc:
            return await send_reply(send, invalid_request(str(exc)))
        up = await proxy.upstream.open(call, body, identity_encoding=True)
        if up is None:
            return await send_error(send, 502, "upstream unreachable", "upstream_error")
        encoded = (up.header("content-encoding") or "identity").lower() != "identity"
        if not 200 <= up.status < 300 or encoded:  # an error, or compressed despite identity: as it came
            return await relay(receive, send, up)
        perturber = response_perturber(settings, call.parsed, proxy.actions.watermark)
        try:
            if (up.header("content-type") or "").startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": up.status, "headers": _answer_headers(up, keep_length=False)})
                await relay_stream(receive, send, _perturbed_sse(up, SSETransformer(perturber)))
                return
            try:
                raw = await up.read()
            except UpstreamError as exc:
                # Nothing is sent yet: the documented 502, not the server's bare 500.
                log.warning("upstream answer to %s cut short: %s", call.path, exc)
                return await send_error(send, 502, "upstream answer cut short", "upstream_error")
            out = _perturbed_json(raw, perturber)
        finally:
            up.release()
        await _send(send, up.status, _answer_headers(up, keep_length=False) + [(b"content-length", str(len(out)).encode())], out)


async def _perturbed_sse(up: Answer, sse: SSETransformer) -> AsyncIterator[bytes]:
    async for chunk in up.chunks():
        yield sse.feed(chunk)
    yield sse.flush()


def _perturbed_json(raw: bytes, perturber: ResponsePerturber) -> bytes:
    try:
        parsed = json.loads(raw)
    except ValueError:  # not JSON despite a 2xx: nothing Moat can perturb
        return raw
    return json.dumps(perturber.body(parsed)).encode() if isinstance(parsed, dict) else raw


# The one place an action word meets its behaviour.
HANDLERS: dict[str, ActionHandler] = {"allow": Forward(), "throttle": Deny("throttle"), "perturb": Perturb(), "block": Deny("block")}


# ---------------------------------------------------------------- the app


class Proxy:
    def __init__(self, settings: ProxySettings, actions: ActionSettings, decider: Decider, identity: IdentityResolver, upstream: Upstream) -> None:
        self.settings = settings
        self.actions = actions
        self.decider = decider
        self.identity = identity
        self.upstream = upstream
        self._read = _READ | {identity.account_header.encode("latin-1")}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body = await _read_body(receive, self.settings.max_body_bytes)
        except ClientGone:
            return
        if body is None:
            return await send_error(send, 413, f"request body exceeds {self.settings.max_body_bytes} bytes", "request_too_large")
        call = _call(scope, body)
        await self._decide(call)
        if call.refused is not None:
            return await send_error(send, 400, call.refused, "invalid_json")
        action = call.score.action if call.score is not None and call.score.action in HANDLERS else "allow"
        await HANDLERS[action].respond(self, call, receive, send)

    async def _decide(self, call: Call) -> None:
        """Sets the JSON body and its score; the score stays None when there is nothing to
        score or Moat faulted (fail open)."""
        try:
            content_type = next((v.decode("latin-1") for k, v in call.headers if k == b"content-type"), None)
            call.parsed, refused = read_json(call.body, content_type)
            if call.method != "POST":
                return
            if refused is not None:
                call.refused = refused
                return
            headers: dict[str, str] = {}
            for k, v in call.headers:
                if k in self._read:
                    # The first of a repeated header, as the upstream reads it (Starlette, Go's
                    # Header.Get): the last let a client add its own `Authorization` and be
                    # scored under a fresh account while billed to its real key.
                    headers.setdefault(k.decode("latin-1"), v.decode("latin-1"))
            who = self.identity.resolve(headers, call.peer)
            event = openai_event(call.parsed, call.path, who, headers.get("user-agent"), request_id(headers), time.time())
        except (ValueError, ValidationError) as exc:  # not JSON, or a body the contract cannot hold
            log.info("request to %s not scored: %s", call.path, str(exc).splitlines()[0])
            return
        except Exception:  # any other fault reading the request fails open, never a 5xx
            log.exception("request to %s not scored: could not build its event", call.path)
            return
        if event is not None:
            call.score = await self.decider.score(event)


class ProxyApp:
    """The ASGI app of `moat proxy`: the decision endpoints (and lifespan) through Starlette,
    every other HTTP request straight to the proxy."""

    def __init__(self, decisions: Starlette, proxy: Proxy | None, envoy_prefix: str, guardrail_path: str, decisions_beside_proxy: bool = False) -> None:
        self.decisions = decisions
        self.proxy = proxy
        self.envoy_prefix = envoy_prefix
        self.guardrail_path = guardrail_path
        self.decisions_beside_proxy = decisions_beside_proxy

    def _decision(self, path: str) -> bool:
        # Beside a proxy the port faces clients, who must not reach an endpoint that scores any
        # account they name (and answers with the risk): there every path is proxied.
        if self.proxy is not None and not self.decisions_beside_proxy:
            return False
        return path.startswith(self.envoy_prefix) or path == self.guardrail_path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.proxy is not None and scope["type"] == "http" and not self._decision(scope["path"]):
            await self.proxy(scope, receive, send)
        else:
            await self.decisions(scope, receive, send)


def build_proxy_app(settings: ProxySettings, scorer: Scorer, actions: ActionSettings | None = None) -> ProxyApp:
    """The proxy (when an upstream is set) with the decision endpoints beside it, all over one
    Scorer and one identity key."""
    from moat.serving.ext_authz import GUARDRAIL_PATH, PREFIX, build_decision_routes

    actions = actions or ActionSettings()
    decider = Decider(scorer, settings.coalesce)
    identity = IdentityResolver(settings)
    upstream = Upstream(settings.upstream, settings.upstream_timeout_s) if settings.upstream else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if upstream is not None:
            await upstream.aclose()

    decisions = Starlette(routes=build_decision_routes(decider, identity, actions), lifespan=lifespan)
    proxy = Proxy(settings, actions, decider, identity, upstream) if upstream is not None else None
    return ProxyApp(decisions, proxy, envoy_prefix=PREFIX + "/", guardrail_path=GUARDRAIL_PATH, decisions_beside_proxy=settings.decisions_beside_upstream)
