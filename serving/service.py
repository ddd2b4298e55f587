"""The BentoML service: parse, call the Scorer, answer. Every decision is made in the Scorer.

Routes (besides BentoML's built-in /livez, /readyz and /metrics):
  POST /score        one flat request event -> one score
  POST /score/batch  a JSON list of events  -> a list of scores, in order
The handlers are a small Starlette app mounted on the service, so the body is read raw: size is
capped before parsing (413), and validation errors come back as 422 naming the field.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from typing import Any

import bentoml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moat.models.events import Event
from moat.serving.metrics import ServiceMetrics
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

log = logging.getLogger("moat.service")
WARM_REQUESTS = 500


class BodyTooLarge(Exception):
    pass


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return json.loads(body)


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _validation_error(exc: ValidationError, prefix: str = "") -> JSONResponse:
    first = exc.errors()[0]
    field = prefix + ".".join(str(p) for p in first["loc"])
    return JSONResponse({"error": f"invalid event: {field or 'body'}: {first['msg']}", "field": field or "body", "errors": exc.errors(include_url=False, include_input=False, include_context=False)}, status_code=422)


async def _handle(request: Request, batch: bool) -> Response:
    svc: MoatService = bentoml.get_current_service()
    t0 = time.perf_counter()
    try:
        body = await _read_json(request, svc.settings.max_body_bytes)
    except BodyTooLarge:
        svc.metrics.error("too_large")
        return _error(413, "body", f"request body exceeds {svc.settings.max_body_bytes} bytes")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        svc.metrics.error("bad_json")
        return _error(400, "body", f"body is not valid JSON: {exc}")
    try:
        if batch:
            if not isinstance(body, list):
                svc.metrics.error("invalid")
                return _error(422, "body", "expected a JSON list of events")
            if len(body) > svc.settings.max_batch:
                svc.metrics.error("too_large")
                return _error(413, "body", f"batch of {len(body)} events exceeds {svc.settings.max_batch}")
            events = []
            for i, raw in enumerate(body):
                try:
                    events.append(Event.model_validate(raw))
                except ValidationError as exc:
                    svc.metrics.error("invalid")
                    return _validation_error(exc, prefix=f"[{i}].")
            scores = svc.scorer.score_many(events)
        else:
            try:
                event = Event.model_validate(body)
            except ValidationError as exc:
                svc.metrics.error("invalid")
                return _validation_error(exc)
            scores = [svc.scorer.score(event)]
    except Exception:  # an internal fault must never become a 5xx that blocks traffic
        log.exception("scoring failed; failing open for this request")
        svc.metrics.error("internal")
        return JSONResponse({"error": "internal scoring fault; failing open", "risk": 0.0, "action": "allow", "reasons": ["moat_error"]}, status_code=200)
    svc.metrics.observe(scores, time.perf_counter() - t0, svc.scorer)
    if not svc.refrozen and svc.scorer.counters.scored >= WARM_REQUESTS:
        # Modules and caches created lazily by the first requests are long-lived too.
        svc.refrozen = True
        gc.freeze()
    out = [s.model_dump(exclude_none=True) for s in scores]
    return JSONResponse(out if batch else out[0])


async def score(request: Request) -> Response:
    return await _handle(request, batch=False)


async def score_batch(request: Request) -> Response:
    return await _handle(request, batch=True)


http = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/score/batch", score_batch, methods=["POST"])])


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
