"""The BentoML service: parse, call the Scorer, answer. Every decision is made in the Scorer.

Routes (besides BentoML's built-in /livez, /readyz and /metrics):
  POST /score        one flat request event -> one score
  POST /score/batch  a JSON list of events  -> a list of scores, in order
The handlers are a small Starlette app mounted on the service, so the body is read raw: size is
capped before parsing (413), JSON is read strictly (400: syntax, NaN/Infinity, numbers beyond a
double, repeated keys), and validation errors come back as 422 naming the field. A batch is
validated whole before any event touches state. An internal fault is never a 5xx: the call is
answered allow with reason MOAT_ERROR, in the contract's shape (see fail_open.py).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import bentoml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moat.models.events import Event
from moat.serving.fail_open import fail_open_scores
from moat.serving.metrics import ServiceMetrics
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

log = logging.getLogger("moat.service")
WARM_REQUESTS = 500


class BodyTooLarge(Exception):
    pass


class BadJson(ValueError):
    """The body is not JSON that Moat reads: a syntax error, NaN or Infinity, a number outside
    the range of a double, or an object with a repeated key."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


# A finite double ends below 1.8e308: an integer literal longer than this cannot be one, and
# refusing it before int() also avoids the quadratic conversion of a huge digit string.
_MAX_INT_DIGITS = 309


def _reject_constant(name: str) -> NoReturn:
    raise BadJson(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS or abs(value := int(text)) > sys.float_info.max:
        raise BadJson(f"integer of {digits} digits is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJson(f"duplicate key {key!r} in a JSON object", field=key)
            seen.add(key)
    return out


def parse_json(body: bytes) -> Any:
    """Strict JSON: anything a lenient reader would accept with a silent guess is a BadJson."""
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except BadJson:
        raise
    except RecursionError as exc:
        raise BadJson("body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadJson(f"body is not valid JSON: {exc}") from exc


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return parse_json(bytes(body))


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _validation_error(exc: ValidationError, prefix: str = "") -> JSONResponse:
    first = exc.errors()[0]
    field = prefix + ".".join(str(p) for p in first["loc"])
    return JSONResponse({"error": f"invalid event: {field or 'body'}: {first['msg']}", "field": field or "body", "errors": exc.errors(include_url=False, include_input=False, include_context=False)}, status_code=422)


class ScoringService(Protocol):
    """What the handlers use of the service; MoatService in production."""

    settings: ServingSettings
    metrics: ServiceMetrics
    scorer: Scorer
    refrozen: bool


def _parse_events(svc: ScoringService, body: Any, batch: bool) -> list[Event] | Response:
    """Every event of the call, validated before any of them touches state; or the 4xx answer."""
    if not batch:
        body = [body]
    elif not isinstance(body, list):
        svc.metrics.error("invalid")
        return _error(422, "body", "expected a JSON list of events")
    elif len(body) > svc.settings.max_batch:
        svc.metrics.error("too_large")
        return _error(413, "body", f"batch of {len(body)} events exceeds {svc.settings.max_batch}")
    events = []
    for i, raw in enumerate(body):
        try:
            events.append(Event.model_validate(raw))
        except ValidationError as exc:
            svc.metrics.error("invalid")
            return _validation_error(exc, prefix=f"[{i}]." if batch else "")
    return events


def _request_ids(body: Any, events: list[Event] | None, batch: bool) -> list[str]:
    """The ids a fail-open answer carries: the events', or what the raw body says when the fault
    came before they were parsed."""
    if events is not None:
        return [e.request_id for e in events]
    items = (body if isinstance(body, list) else []) if batch else [body]
    ids = [item.get("request_id") if isinstance(item, dict) else None for item in items]
    return [rid if isinstance(rid, str) else "" for rid in ids]


async def _handle(svc: ScoringService, request: Request, batch: bool) -> Response:
    t0 = time.perf_counter()
    body: Any = None
    events: list[Event] | None = None
    try:
        try:
            body = await _read_json(request, svc.settings.max_body_bytes)
        except BodyTooLarge:
            svc.metrics.error("too_large")
            return _error(413, "body", f"request body exceeds {svc.settings.max_body_bytes} bytes")
        except BadJson as exc:
            svc.metrics.error("bad_json")
            return _error(400, exc.field, str(exc))
        except ClientDisconnect:  # the caller gave up mid-body: no one reads this answer
            return Response(status_code=499)
        parsed = _parse_events(svc, body, batch)
        if isinstance(parsed, Response):
            return parsed
        events = parsed
        scores = svc.scorer.score_many(events)
    except Exception:  # an internal fault must never become a 5xx that blocks traffic
        log.exception("scoring failed; failing open for this call")
        svc.metrics.error("internal")
        answer = fail_open_scores(_request_ids(body, events, batch), svc.scorer.model_version)
        return JSONResponse(answer if batch else answer[0])
    out = [s.model_dump(exclude_none=True) for s in scores]
    try:
        svc.metrics.observe(scores, time.perf_counter() - t0, svc.scorer)
        if not svc.refrozen and svc.scorer.counters.scored >= WARM_REQUESTS:
            # Modules and caches created lazily by the first requests are long-lived too.
            svc.refrozen = True
            gc.freeze()
    except Exception:  # the events are scored and their state updated: answer the real scores
        log.exception("recording metrics failed after scoring")
        svc.metrics.error("internal")
    return JSONResponse(out if batch else out[0])


def build_app(current_service: Callable[[], ScoringService]) -> Starlette:
    """The routes, reading the service through `current_service` (BentoML's lookup in
    production; tests pass their own)."""

    async def score(request: Request) -> Response:
        return await _handle(current_service(), request, batch=False)

    async def score_batch(request: Request) -> Response:
        return await _handle(current_service(), request, batch=True)

    return Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/score/batch", score_batch, methods=["POST"])])


http = build_app(bentoml.get_current_service)


@bentoml.asgi_app(http, path="/")
@bentoml.service(name="moat", traffic={"timeout": 10}, workers=1)
class MoatService:
    def __init__(self) -> None:
        self.settings = ServingSettings()
        self.metrics = ServiceMetrics()
        self.scorer = Scorer(self.settings)
        self.metrics.model_loaded(self.scorer.model_version)
        # Everything allocated so far (libraries, the model) lives for the whole process. Freezing
        # it keeps full garbage collections from walking it, which otherwise showed up as
        # 50-100 ms stalls in the p99 latency under steady load.
        # Scoring allocates many short-lived small arrays: a larger first-generation threshold
        # makes collections rarer; the rest of the heap is re-frozen once warm (see _handle).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        self.refrozen = False
        log.info("moat scorer ready: model %s, state %s, mode %s", self.scorer.model_version, self.settings.state, self.settings.mode)

    def __is_ready__(self) -> bool:
        return self.scorer is not None
