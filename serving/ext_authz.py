"""Decision endpoints for gateways that keep the traffic themselves and ask Moat per request.

Envoy ext_authz, HTTP service (`/ext_authz/<original path>`): Envoy sends the original method,
`path_prefix` + the original path, the headers allowed by `allowed_headers` (Host, Method,
Path, Content-Length and Authorization always) and, with `with_request_body`, the body; a body
cut at `max_request_bytes` carries `x-envoy-auth-partial-body: true`. Answers:
  allow, perturb -> 200 with x-moat-action / x-moat-risk / x-moat-reasons (for the upstream, or
                    an ext_proc filter that perturbs, via allowed_upstream_headers)
  throttle       -> 429 + Retry-After, OpenAI error JSON (Envoy relays status, headers, body)
  block          -> 403, OpenAI error JSON
A partial body is scored on what arrived (its text as the prompt when the JSON is cut) and
flagged with the reason `partial_body`. Never 5xx: Envoy reads a 5xx as an authz failure
(failure_mode_allow), which must mean Envoy could not reach Moat, not that Moat faulted.

LiteLLM Generic Guardrail API (`POST /beta/litellm_basic_guardrail_api`): the request carries
`texts`, `request_data` (LiteLLM's key metadata: key hash, user, team) and optionally
`structured_messages`; the answer's `action` is NONE or BLOCKED. That API has no throttle or
perturb: throttle and block answer BLOCKED (its reason says which), perturb answers NONE. The
guardrail class in moat.integrations.litellm_guardrail applies all four.

Both are served by `moat proxy` (with or without --upstream) over its one Scorer; mount
`build_decision_app` elsewhere for a process of their own.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moat.models.events import Event
from moat.serving.actions.settings import ActionSettings
from moat.serving.fail_open import MOAT_ERROR
from moat.serving.proxy import Decider, Identity, IdentityResolver, client_address, denial, openai_event, read_json, request_id
from moat.serving.scorer import Score

log = logging.getLogger("moat.ext_authz")

PREFIX = "/ext_authz"
GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
PARTIAL_BODY = "partial_body"  # reason code: the gateway sent only the first max_request_bytes
NOT_SCORED = "not_scored"  # reason code: no text to score (a GET, a body without messages)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def moat_headers(action: str, risk: float, reasons: list[str]) -> dict[str, str]:
    return {"x-moat-action": action, "x-moat-risk": f"{risk:.6f}", "x-moat-reasons": ",".join(reasons)}


def _allowed(action: str, risk: float, reasons: list[str]) -> Response:
    return Response(status_code=200, headers=moat_headers(action, risk, reasons))


class EnvoyAuthz:
    """Envoy's ext_authz HTTP contract over the shared Decider."""

    def __init__(self, decider: Decider, identity: IdentityResolver, actions: ActionSettings) -> None:
        self.decider = decider
        self.identity = identity
        self.actions = actions

    async def check(self, request: Request) -> Response:
        try:
            return await self._check(request)
        except Exception:  # never a 5xx: that would read as "Moat unreachable" in Envoy's stats
            log.exception("ext_authz check failed; allowing")
            return _allowed("allow", 0.0, [MOAT_ERROR])

    async def _check(self, request: Request) -> Response:
        partial = request.headers.get("x-envoy-auth-partial-body", "").lower() == "true"
        body = await request.body()
        parsed, refused = read_json(body, request.headers.get("content-type"))
        if refused is not None and not partial:  # the gateway answers the client this 400
            return JSONResponse({"error": {"message": refused, "type": "invalid_request_error", "param": None, "code": "invalid_json"}}, status_code=400)
        event = self._event(request, body, parsed, partial)
        if event is None:
            return _allowed("allow", 0.0, [NOT_SCORED])
        score = await self.decider.score(event)
        if score is None:
            return _allowed("allow", 0.0, [MOAT_ERROR])
        reasons = score.reasons + ([PARTIAL_BODY] if partial else [])
        resp = denial(score.action, self.actions)
        if resp is None:  # allow and perturb go through; the upstream reads x-moat-action
            return _allowed(score.action, score.risk, reasons)
        resp.headers.update(moat_headers(score.action, score.risk, reasons))
        return resp

    def _event(self, request: Request, body: bytes, parsed: Any, partial: bool) -> Event | None:
        headers = request.headers
        # Envoy is the peer: with use_remote_address it appends the client to X-Forwarded-For,
        # so the last entry (at least) is trusted.
        ip = client_address(headers.get("x-forwarded-for"), None, max(self.identity.depth, 1))
        who = self.identity.resolve(headers, ip)
        endpoint = "/" + request.path_params["path"]
        rid = request_id(headers)
        ua = headers.get("user-agent")
        if parsed is None and body:
            if not partial:
                return None  # not JSON, and not said to be
            # The JSON was cut at max_request_bytes: score the text that arrived.
            parsed = {"prompt": body.decode("utf-8", errors="replace")}
        try:
            return openai_event(parsed, endpoint, who, ua, rid, time.time())
        except ValidationError as exc:
            log.info("ext_authz request %s not scored: %s", rid, str(exc).splitlines()[0])
            return None


class GuardrailRequest(BaseModel):
    """The fields of LiteLLM's GenericGuardrailAPIRequest that Moat reads."""

    model_config = ConfigDict(extra="ignore")

    input_type: str = "request"
    texts: list[str] | None = None
    structured_messages: list[dict[str, Any]] | None = None
    request_data: dict[str, Any] = {}
    request_headers: dict[str, str] | None = None
    model: str | None = None
    litellm_call_id: str | None = None


class LiteLLMGuardrailAPI:
    """LiteLLM's Generic Guardrail API: NONE or BLOCKED per request."""

    def __init__(self, decider: Decider, identity: IdentityResolver) -> None:
        self.decider = decider
        self.identity = identity

    async def check(self, request: Request) -> Response:
        try:
            req = GuardrailRequest.model_validate(json.loads(await request.body()))
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": f"invalid guardrail request: {str(exc).splitlines()[0]}"}, status_code=400)
        try:
            score = await self._score(req) if req.input_type == "request" else None
        except Exception:  # never a 5xx; LiteLLM's fail_closed would turn a Moat fault into an outage
            log.exception("guardrail check failed; answering NONE")
            score = None
        if score is None or score.action not in ("throttle", "block"):
            return JSONResponse({"action": "NONE"})
        why = "rate limited: retry later" if score.action == "throttle" else "blocked by usage policy"
        return JSONResponse({"action": "BLOCKED", "blocked_reason": f"moat: {why} ({','.join(score.reasons)})"})

    async def _score(self, req: GuardrailRequest) -> Score | None:
        meta = req.request_data
        key_hash = meta.get("user_api_key_hash")
        # LiteLLM's key hash is already not the key; Moat keys it again so ids match its own.
        key_id = self.identity.key_id(key_hash) if isinstance(key_hash, str) and key_hash else None
        # Not the end-user id: LiteLLM takes it from the request body's `user`, a client's to change.
        account = next((meta[k] for k in ("user_api_key_user_id", "user_api_key_team_id") if isinstance(meta.get(k), str) and meta[k]), None)
        headers = {k.lower(): v for k, v in (req.request_headers or {}).items()}
        ip = client_address(headers.get("x-forwarded-for"), None, max(self.identity.depth, 1))
        who = Identity((account or key_id or f"anon:{ip or 'unknown'}")[:256], key_id, ip)
        if req.structured_messages:
            body: dict[str, Any] = {"messages": req.structured_messages, "model": req.model}
        else:
            body = {"prompt": "\n".join(req.texts or []), "model": req.model}
        event = openai_event(body, "/v1/chat/completions", who, headers.get("user-agent"), req.litellm_call_id or request_id(headers), time.time())
        return await self.decider.score(event) if event is not None else None


def build_decision_routes(decider: Decider, identity: IdentityResolver, actions: ActionSettings) -> list[Route]:
    envoy = EnvoyAuthz(decider, identity, actions)
    litellm = LiteLLMGuardrailAPI(decider, identity)
    return [Route(PREFIX + "/{path:path}", envoy.check, methods=_METHODS), Route(GUARDRAIL_PATH, litellm.check, methods=["POST"])]


def build_decision_app(decider: Decider, identity: IdentityResolver, actions: ActionSettings | None = None) -> Starlette:
    """The decision endpoints alone, to mount under another ASGI app."""
    return Starlette(routes=build_decision_routes(decider, identity, actions or ActionSettings()))
