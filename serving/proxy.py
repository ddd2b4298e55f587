"""`moat proxy`: an OpenAI-compatible reverse proxy that scores every request and applies the
action, so an operator gets Moat by pointing clients at it instead of at the real upstream.

Per request: identity from the request (account = keyed hash of the bearer key, or a configured
header; address = the peer or a trusted X-Forwarded-For hop), a contract Event from the OpenAI
body, the same in-process Scorer `moat serve` runs, then the action:
  allow    -> forwarded untouched; the answer, SSE included, is streamed back byte for byte
  throttle -> 429 + Retry-After, OpenAI error JSON (the SDKs raise RateLimitError)
  block    -> 403, OpenAI error JSON (PermissionDeniedError); never 5xx, which clients retry
  perturb  -> the body's extraction knobs capped, forwarded, logprobs of the answer perturbed
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
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import yarl
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

from moat.models.events import MAX_LOGIT_BIAS, MAX_OUTPUT_TOKENS, SEED_RANGE, Event
from moat.serving.actions import ActionSettings, InvalidRequest, PerturbSettings, Reply, ResponsePerturber, SSETransformer, invalid_request, perturb_request, reply_for, request_seed
from moat.serving.scorer import Score, Scorer

log = logging.getLogger("moat.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy recomputes for its own hop.
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_PROXY_", extra="ignore")

    upstream: str | None = Field(default=None, description="base URL of the real OpenAI-compatible API; unset: only the decision endpoints are served")
    secret: SecretStr | None = Field(default=None, description="HMAC key for hashing API keys; unset: a random key per process (ids then differ across restarts and replicas)")
    account_header: str = Field(default="authorization", description="header naming the account; `authorization`: the keyed hash of the bearer key")
    forwarded_depth: int = Field(default=0, ge=0, description="trusted proxies in front of Moat: the client address is the X-Forwarded-For entry this many from the right; 0: the peer")
    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="largest request body read; larger ones get 413")
    upstream_timeout_s: float = Field(default=600.0, gt=0, description="read timeout towards the upstream; generations can be slow")


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


def _clip(value: Any, lo: float | None, hi: float | None, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
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
    raw.setdefault("max_tokens", body.get("max_completion_tokens"))
    if isinstance(body.get("logprobs"), int) and not isinstance(body.get("logprobs"), bool):
        raw["top_logprobs"] = body["logprobs"]  # legacy completions: logprobs=k asks for k alternatives
        out["logprobs"] = True
    elif isinstance(body.get("logprobs"), bool):
        out["logprobs"] = body["logprobs"]
    for name, (lo, hi) in _INTS.items():
        out[name] = _clip(raw.get(name), lo, hi, int)
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        numeric = [(str(k), float(v)) for k, v in bias.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        out["logit_bias"] = {k: min(max(v, -100.0), 100.0) for k, v in numeric[:MAX_LOGIT_BIAS]}
    stop = body.get("stop")
    if isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        out["stop"] = stop if isinstance(stop, str) else stop[:16]
    return {k: v for k, v in out.items() if v is not None}


def openai_event(body: Any, endpoint: str, who: Identity, user_agent: str | None, request_id: str, ts: float) -> Event | None:
    """The contract Event of an OpenAI-style request body, or None when it carries no text to
    score (a model listing, a file upload)."""
    if not isinstance(body, dict):
        return None
    messages = prompt = None
    if isinstance(body.get("messages"), list):
        messages = [
            {"role": r if (r := _ROLE_ALIASES.get(m.get("role"), m.get("role"))) in _ROLES else "user", "content": _text(m.get("content"))}
            for m in body["messages"][:1024]
            if isinstance(m, dict)
        ]
    else:
        raw = body.get("prompt", body.get("input"))  # completions; embeddings and responses use `input`
        if isinstance(raw, list):
            raw = "\n".join(p for p in raw if isinstance(p, str))
        prompt = _text(raw) if isinstance(raw, str) else None
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
    """The in-process Scorer, called on the event loop: one call costs well under a millisecond,
    less than a hop to a worker thread and back (which also waits out GIL switch intervals under
    load), and the Scorer's state then has one thread. Every fault becomes None (the caller
    fails open)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def score(self, event: Event) -> Score | None:
        try:
            return self.scorer.score(event)
        except Exception:  # a scoring fault must not stop traffic: fail open
            log.exception("scoring request %s failed; failing open", event.request_id)
            return None


def request_id(headers: Mapping[str, str]) -> str:
    rid = (headers.get("x-request-id") or "").strip()
    return rid[:128] if rid else uuid.uuid4().hex


# ---------------------------------------------------------------- forwarding


@dataclass
class Call:
    """One proxied request: what arrived, and what Moat decided."""

    request: Request
    body: bytes
    parsed: Any  # the JSON body, or None when it is not JSON
    score: Score | None


class Upstream:
    """The connection pool to the real API, and the two ways of relaying its answer. aiohttp
    (already a BentoML dependency) rather than httpx: it costs half the CPU per forwarded
    request, which is most of what the proxy adds besides scoring."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that serves.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, ttl_dns_cache=60),
                timeout=self.timeout,
                auto_decompress=False,  # relay the bytes as they came; perturb asks for identity
                # The upstream must see the client's own Accept, Accept-Encoding and User-Agent.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    async def open(self, request: Request, body: bytes, identity_encoding: bool) -> aiohttp.ClientResponse | Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _HOP]
        if identity_encoding:  # Moat rewrites this answer, so it must arrive uncompressed
            headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"] + [("accept-encoding", "identity")]
        url = self.base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            return await self.session().request(request.method, yarl.URL(url, encoded=True), headers=headers, data=body, allow_redirects=False)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # the upstream's fault, not Moat's: a gateway's 502
            log.warning("upstream unreachable for %s %s: %s", request.method, request.url.path, type(exc).__name__)
            return openai_error(502, f"upstream unreachable: {type(exc).__name__}", "upstream_error")

    @staticmethod
    def relay(up: aiohttp.ClientResponse) -> Response:
        """The answer exactly as it came: status, headers (bar hop-by-hop) and raw bytes, each
        chunk sent on as it arrives."""
        resp = StreamingResponse(up.content.iter_any(), status_code=up.status, background=BackgroundTask(up.release))
        resp.raw_headers = [(k, v) for k, v in up.raw_headers if k.decode("latin-1").lower() not in _HOP or k.lower() == b"content-length"]
        return resp

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _relayed_headers(up: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """Headers of an answer Moat rewrote: its length is Moat's now."""
    return [(k, v) for k, v in up.raw_headers if k.decode("latin-1").lower() not in _HOP]


# ---------------------------------------------------------------- actions

def openai_error(status: int, message: str, code: str) -> Response:
    """The proxy's own answers (413: body too large; 502: upstream unreachable) in OpenAI's
    error shape. The actions' answers come from the actions library (`denial`)."""
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error", "param": None, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def reply(r: Reply) -> Response:
    """An answer of the actions library (throttle, block, a 400) as a Starlette response."""
    return Response(r.body, status_code=r.status, headers=r.headers)


def denial(action: str, settings: ActionSettings) -> Response | None:
    """The answer that replaces forwarding for `action` (throttle: 429, block: 403), or None."""
    r = reply_for(action, settings)
    return reply(r) if r is not None else None


class FailOpenPerturber(ResponsePerturber):
    """A body the perturber cannot read (a malformed logprobs entry) goes back as it came."""

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().body(body)
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("response perturbation failed on a malformed body; passing it unchanged")
            return body


def response_perturber(settings: PerturbSettings, request_body: dict[str, Any]) -> FailOpenPerturber:
    return FailOpenPerturber(request_seed(settings.secret.get_secret_value().encode(), request_body), settings)


class ActionHandler(Protocol):
    async def respond(self, proxy: "Proxy", call: Call) -> Response: ...


class Forward:
    async def respond(self, proxy: "Proxy", call: Call) -> Response:
        up = await proxy.upstream.open(call.request, call.body, identity_encoding=False)
        return up if isinstance(up, Response) else Upstream.relay(up)


class Deny:
    """Throttle and block: the actions library's answer, and nothing forwarded."""

    def __init__(self, action: str) -> None:
        self.action = action

    async def respond(self, proxy: "Proxy", call: Call) -> Response:
        return denial(self.action, proxy.actions) or await Forward().respond(proxy, call)


class Perturb:
    """Cap what the request may extract, forward it, then perturb the logprobs of a successful
    answer, whole or as SSE chunks. A body that is not a JSON object is forwarded as it came
    (there is nothing to cap, and the upstream answers it)."""

    async def respond(self, proxy: "Proxy", call: Call) -> Response:
        if not isinstance(call.parsed, dict):
            return await Forward().respond(proxy, call)
        settings = proxy.actions.perturb
        try:
            body = json.dumps(perturb_request(call.parsed, settings)).encode()
        except InvalidRequest as exc:
            return reply(invalid_request(str(exc)))
        up = await proxy.upstream.open(call.request, body, identity_encoding=True)
        if isinstance(up, Response):
            return up
        encoded = up.headers.get("content-encoding", "identity").lower() != "identity"
        if not 200 <= up.status < 300 or encoded:  # an error, or compressed despite identity: as it came
            return Upstream.relay(up)
        perturber = response_perturber(settings, call.parsed)
        if up.headers.get("content-type", "").startswith("text/event-stream"):
            resp = StreamingResponse(_perturbed_sse(up, SSETransformer(perturber)), status_code=up.status, background=BackgroundTask(up.release))
            resp.raw_headers = _relayed_headers(up)
            return resp
        try:
            raw = await up.read()
        finally:
            up.release()
        out = _perturbed_json(raw, perturber)
        resp = Response(out, status_code=up.status)
        resp.raw_headers = _relayed_headers(up) + [(b"content-length", str(len(out)).encode())]
        return resp


async def _perturbed_sse(up: aiohttp.ClientResponse, sse: SSETransformer) -> AsyncIterator[bytes]:
    async for chunk in up.content.iter_any():
        if out := sse.feed(chunk):
            yield out
    if tail := sse.flush():
        yield tail


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

    async def handle(self, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.settings.max_body_bytes:
                return openai_error(413, f"request body exceeds {self.settings.max_body_bytes} bytes", "request_too_large")
        parsed, score = await self._decide(request, bytes(body))
        action = score.action if score is not None and score.action in HANDLERS else "allow"
        return await HANDLERS[action].respond(self, Call(request, bytes(body), parsed, score))

    async def _decide(self, request: Request, body: bytes) -> tuple[Any, Score | None]:
        """The JSON body and its score; the score is None when there is nothing to score or
        Moat faulted (fail open)."""
        parsed = None
        try:
            if body:
                parsed = json.loads(body)
            if request.method != "POST":
                return parsed, None
            headers = request.headers
            who = self.identity.resolve(headers, request.client.host if request.client else None)
            event = openai_event(parsed, request.url.path, who, headers.get("user-agent"), request_id(headers), time.time())
        except (ValueError, ValidationError) as exc:  # not JSON, or a body the contract cannot hold
            log.info("request to %s not scored: %s", request.url.path, str(exc).splitlines()[0])
            return parsed, None
        except Exception:  # any other fault reading the request fails open, never a 5xx
            log.exception("request to %s not scored: could not build its event", request.url.path)
            return parsed, None
        if event is None:
            return parsed, None
        return parsed, await self.decider.score(event)


def build_proxy_app(settings: ProxySettings, scorer: Scorer, actions: ActionSettings | None = None) -> Starlette:
    """The proxy (when an upstream is set) with the decision endpoints beside it, all over one
    Scorer and one identity key."""
    from moat.serving.ext_authz import build_decision_routes

    actions = actions or ActionSettings()
    decider = Decider(scorer)
    identity = IdentityResolver(settings)
    upstream = Upstream(settings.upstream, settings.upstream_timeout_s) if settings.upstream else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if upstream is not None:
            await upstream.aclose()

    routes: list[Route | Mount] = build_decision_routes(decider, identity, actions)
    if upstream is not None:
        proxy = Proxy(settings, actions, decider, identity, upstream)
        routes.append(Route("/{path:path}", proxy.handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]))
    return Starlette(routes=routes, lifespan=lifespan)
