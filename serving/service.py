"""The BentoML service: parse, call the Scorer, answer. Every decision is made in the Scorer.

Routes (besides BentoML's built-in /livez, /readyz, /metrics and /docs.json, which publishes
these two with their request and response schemas):
  POST /score        one flat request event -> one score
  POST /score/batch  a JSON list of events  -> a list of scores, in order
The handlers are a small FastAPI app mounted on the service (BentoML merges a mounted FastAPI
app's paths into its OpenAPI document; `Routes` serves the two POST routes without FastAPI's
per-request machinery), taking the raw request, so the edges are Moat's own:
framing with both Content-Length and Transfer-Encoding is a 400 (request smuggling); a media type
other than application/json is a 415; a body that does not arrive within body_timeout_s is a 408
(a Content-Length larger than the body would otherwise hold the call until BentoML's 10 s
timeout); size is capped before parsing (413); JSON is read strictly (400: syntax, NaN/Infinity,
numbers beyond a double, repeated keys); validation errors come back as 422 naming the field. A
batch is validated whole before any event touches state. An internal fault is never a 5xx: the
call is answered allow with reason MOAT_ERROR, in the contract's shape (see fail_open.py).

Capacity: the Scorer is not thread-safe, so the ScoringLane lets one job at a time touch it:
single calls run on the event loop itself when the state is in memory (cheaper than a thread
hop), and in the lane's one thread when the store waits on Redis, as batch chunks always do, so
that the event loop keeps reading requests meanwhile. Single calls wait before batch work: a
batch is scored in chunks of batch_chunk events, and single calls that arrived meanwhile go before its next chunk,
so a caller posting large batches back to back cannot starve the gateway's per-request calls.
Single calls that queue while the scorer is busy are scored together, one network batch per
turn of the lane (SingleCalls), with the answers of scoring them one by one; a fault in one
call's featurisation or policy fails open that call alone.
Batches also pause between chunks so that they take at most batch_share of the scorer's time
(0.3 by default: a 1,000-event batch takes about 2 s instead of 0.6 s), which leaves the
event loop stretches free of GIL contention.
Queues are bounded, and overload is never a 5xx (gateways retry 5xx, which feeds the flood):
a /score call finding max_queue calls already waiting is answered allow with reason
MOAT_OVERLOADED (a gateway would fail open on its own deadline anyway; this answers at once and
says why), and a batch beyond max_batch_queue in flight gets 429 with Retry-After, since batch
callers are offline and can retry. Both count in moat_shed_total{route}.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, Protocol, TypeVar

import bentoml
from fastapi import FastAPI
from pydantic import Field, ValidationError, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from moat.models.events import Event
from moat.models.memory_store import MemoryStore
from moat.serving.coalesce import Coalescer
from moat.serving.fail_open import MOAT_OVERLOADED, fail_open_scores
from moat.serving.metrics import ServiceMetrics
from moat.serving.scorer import Score, Scorer
from moat.serving.settings import ServingSettings

log = logging.getLogger("moat.service")
WARM_REQUESTS = 500
SWITCH_INTERVAL_S = 0.0005
T = TypeVar("T")


class EdgeSettings(BaseSettings):
    """Limits of the HTTP edge and of the queue in front of the scorer (MOAT_* variables)."""

    model_config = SettingsConfigDict(env_prefix="MOAT_", extra="ignore")

    body_timeout_s: float = Field(default=1.0, gt=0, description="a request body not fully received within this is answered 408")
    max_queue: int = Field(default=256, ge=1, description="/score calls waiting for the scorer beyond which a call is shed (allow, moat_overloaded)")
    max_batch_queue: int = Field(default=4, ge=1, description="/score/batch calls in flight beyond which a batch is answered 429")
    batch_chunk: int = Field(default=8, ge=1, description="events a batch scores before waiting single calls go first; about 0.6 ms each")
    batch_share: float = Field(default=0.3, gt=0, le=1, description="most of the time batches may keep the scorer (and the GIL) busy; they pause between chunks to stay within it")
    score_inline: bool = Field(default=True, description="score single calls on the event loop when the state is in memory (a store that waits on Redis always takes the lane's thread)")
    coalesce: int = Field(default=32, ge=1, description="single /score calls that arrived while the scorer was busy, scored together in one network batch; 1 scores each alone")
    coalesce_wait_ms: float = Field(default=0.0, ge=0, le=1000, description="how long the oldest waiting /score call may wait for others to fill a batch of `coalesce` (the GPU tier's micro-batcher); 0, the default, never waits")

    @model_validator(mode="after")
    def _batch_can_fill(self) -> EdgeSettings:
        # Calls beyond max_queue are shed, so a larger batch would never fill and every call
        # would wait out the whole wait.
        if self.coalesce_wait_ms > 0 and self.coalesce > self.max_queue:
            raise ValueError(f"coalesce ({self.coalesce}) must not exceed max_queue ({self.max_queue}) when coalesce_wait_ms is set: a batch that large never fills")
        return self


class ScoringLane:
    """The one thread that touches the Scorer, and the queue in front of it, in which waiting
    single calls go before waiting batch chunks. The lane is handed from one job to the next
    when the job's thread work ends, even if its caller gave up meanwhile, so two jobs never
    overlap. A second thread takes a batch's other heavy work (parsing and validating 1,000
    events, writing 1,000 scores: 50-75 ms), which would otherwise stall the event loop and every
    single call waiting on it."""

    SINGLE, BATCH = 0, 1

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moat-scorer")
        self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moat-batch-io")
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.batches_in_flight = 0

    def waiting(self, priority: int) -> int:
        if not self._waiters:
            return 0
        return sum(1 for p, _, fut in self._waiters if p == priority and not fut.done())

    async def run(self, priority: int, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run `fn` when the lane is free: in the lane's thread, or with `inline` on the event
        loop itself. A single call to a Scorer whose store never waits on the network costs well
        under a millisecond, less than the hop to the thread and back (two wake-ups, and GIL
        hand-overs that wait out switch intervals under load): inline, /score's p50 at 150 req/s
        fell from 4.7 to 2.5 ms on the 2-core machine. A store that waits on Redis must not
        stall the loop, so it takes the thread."""
        await self.acquire(priority)
        return await self.run_held(fn, *args, inline=inline)

    async def run_held(self, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """`run` for a caller that holds the lane already (`acquire`); the lane is released
        when `fn` ends."""
        if inline:
            try:
                return fn(*args)
            finally:
                self.release()
        try:
            job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BaseException:
            self.release()
            raise
        job.add_done_callback(lambda _: self.release())
        return await asyncio.shield(job)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run work that does not touch the Scorer off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._side, fn, *args)

    async def acquire(self, priority: int) -> None:
        """Wait for the lane, then hold it; `run_held` or `release` hands it on."""
        if not self._busy:
            self._busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the lane just as the caller left
                self.release()
            raise

    def release(self) -> None:
        """Hand the lane to the next waiter (single calls first), or free it."""
        while self._waiters:
            _, _, turn = heapq.heappop(self._waiters)
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False


@dataclass(slots=True)
class _Call:
    """A /score call waiting for its turn in `SingleCalls`."""

    svc: ScoringService
    events: list[Event]
    t0: float


class SingleCalls:
    """The /score calls that arrive while the scorer is busy, scored together
    (serving/coalesce.py): a turn waits for the lane as a single call does, before batch chunks,
    and takes the calls waiting then. Each call gets the score that scoring the calls one by one
    in arrival order gives, up to the float rounding of a batched network call (a risk's last
    digit, as in replay). With `wait_s` above zero a turn first waits for a fuller batch
    (EdgeSettings.coalesce_wait_ms)."""

    def __init__(self, lane: ScoringLane, coalesce: int, inline: bool, wait_s: float = 0.0) -> None:
        self._lane = lane
        self._inline = inline  # score on the event loop when the state is in memory (EdgeSettings.score_inline)
        self._calls: Coalescer[_Call, list[Score]] = Coalescer(coalesce, self._turn, partial(lane.acquire, ScoringLane.SINGLE), lane.release, wait_s)

    def waiting(self) -> int:
        return self._calls.waiting()

    async def score(self, svc: ScoringService, events: list[Event], t0: float) -> list[Score]:
        return await self._calls.submit(_Call(svc, events, t0))

    async def _turn(self, calls: list[_Call]) -> list[list[Score] | Exception]:
        # The coalescer has taken the lane for this turn; run_held hands it on when the turn ends.
        try:
            svc = calls[0].svc
            inline = self._inline and isinstance(svc.scorer.store, MemoryStore)
        except BaseException:
            self._lane.release()
            raise
        return await self._lane.run_held(_score_calls, svc, calls, inline=inline)


def _score_calls(svc: ScoringService, calls: list[_Call]) -> list[list[Score] | Exception]:
    """Score the calls' events in one `Scorer.score_each`; each call gets its scores, or the
    fault of one of its events. Metrics are recorded per scored call."""
    answers = svc.scorer.score_each([e for c in calls for e in c.events])
    out: list[list[Score] | Exception] = []
    at = 0
    for c in calls:
        mine = answers[at : at + len(c.events)]
        at += len(c.events)
        fault = next((a for a in mine if isinstance(a, Exception)), None)
        if fault is not None:
            out.append(fault)
            continue
        scores: list[Score] = mine  # type: ignore[assignment]  # no fault among them
        _record(svc, scores, c.t0)
        out.append(scores)
    try:
        svc.metrics.scored_together(len(calls))
    except Exception:  # the calls are scored: a metrics fault must not fail them open
        log.exception("recording metrics failed after scoring")
    return out


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
        # UTF-8 only (RFC 8259), a BOM ignored: json.loads(bytes) would guess UTF-16/32 and let
        # surrogate bytes through.
        text = body.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except BadJson:
        raise
    except RecursionError as exc:
        raise BadJson("body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadJson(f"body is not valid JSON: {exc}") from exc


class BadFraming(Exception):
    pass


class BadMediaType(Exception):
    pass


def _check_headers(request: Request) -> None:
    """Refuse what proxies and Moat could read differently before reading the body."""
    if "transfer-encoding" in request.headers and "content-length" in request.headers:
        raise BadFraming("Content-Length together with Transfer-Encoding is ambiguous framing")
    media_type, *params = [part.strip().lower() for part in request.headers.get("content-type", "").split(";")]
    charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
    if media_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise BadMediaType(f"Content-Type must be application/json (utf-8), not {request.headers.get('content-type', 'missing')!r}"[:200])


async def _read_raw(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _safe(text: str) -> str:
    """Text for a JSON answer: a lone surrogate from the input (a JSON key may hold one) cannot
    be encoded as UTF-8, and raising there turned a 400 into a fail-open answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": _safe(message), "field": _safe(field)}, status_code=status, headers=headers)


def _validation_error(exc: ValidationError, prefix: str = "") -> JSONResponse:
    first = exc.errors()[0]
    field = (prefix + ".".join(str(p) for p in first["loc"])).rstrip(".")
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


def _record(svc: ScoringService, scores: list[Score], t0: float) -> None:
    """Metrics of a scored call. The events are scored and their state updated by now, so a
    fault here must not turn the real scores into an unscored allow."""
    try:
        svc.metrics.observe(scores, time.perf_counter() - t0, svc.scorer)
        if not svc.refrozen and svc.scorer.counters.scored >= WARM_REQUESTS:
            # Modules and caches created lazily by the first requests are long-lived too.
            svc.refrozen = True
            gc.freeze()
    except Exception:
        log.exception("recording metrics failed after scoring")
        svc.metrics.error("internal")


async def _parse_inline(raw: bytes) -> Any:
    return parse_json(raw)


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


async def _read_body(svc: ScoringService, edge: EdgeSettings, request: Request, parse: Callable[[bytes], Awaitable[Any]] = _parse_inline) -> Any | Response:
    """The body read as strict JSON, or the 4xx answer."""
    try:
        _check_headers(request)
        async with asyncio.timeout(edge.body_timeout_s):
            raw = await _read_raw(request, svc.settings.max_body_bytes)
        body = await parse(raw)
    except BadFraming as exc:
        svc.metrics.error("framing")
        return _error(400, "headers", str(exc))
    except BadMediaType as exc:
        svc.metrics.error("media_type")
        return _error(415, "content-type", str(exc))
    except TimeoutError:
        svc.metrics.error("timeout")
        return _error(408, "body", f"request body not received within {edge.body_timeout_s} s")
    except BodyTooLarge:
        svc.metrics.error("too_large")
        return _error(413, "body", f"request body exceeds {svc.settings.max_body_bytes} bytes")
    except BadJson as exc:
        svc.metrics.error("bad_json")
        return _error(400, exc.field, str(exc))
    return body


async def _handle_one(svc: ScoringService, singles: SingleCalls, edge: EdgeSettings, request: Request) -> Response:
    t0 = time.perf_counter()
    body: Any = None
    events: list[Event] | None = None
    try:
        body = await _read_body(svc, edge, request)
        if isinstance(body, Response):
            return body
        parsed = _parse_events(svc, body, batch=False)
        if isinstance(parsed, Response):
            return parsed
        events = parsed
        if singles.waiting() >= edge.max_queue:
            svc.metrics.shed("score")
            return JSONResponse(fail_open_scores(_request_ids(body, events, False), svc.scorer.model_version, MOAT_OVERLOADED)[0])
        scores = await singles.score(svc, events, t0)
    except ClientDisconnect:  # the caller gave up mid-body: no one reads this answer
        return Response(status_code=499)
    except Exception:  # an internal fault must never become a 5xx that blocks traffic
        log.exception("scoring failed; failing open for this call")
        svc.metrics.error("internal")
        return JSONResponse(fail_open_scores(_request_ids(body, events, False), svc.scorer.model_version)[0])
    return JSONResponse(scores[0].model_dump(exclude_none=True))


async def _handle_batch(svc: ScoringService, lane: ScoringLane, edge: EdgeSettings, request: Request) -> Response:
    t0 = time.perf_counter()
    body: Any = None
    events: list[Event] | None = None
    scores: list[Score] = []
    if lane.batches_in_flight >= edge.max_batch_queue:
        svc.metrics.shed("batch")
        return _error(429, "body", f"{lane.batches_in_flight} batches are already being scored; retry later", headers={"Retry-After": "1"})
    lane.batches_in_flight += 1
    try:
        body = await _read_body(svc, edge, request, partial(lane.offload, parse_json))
        if isinstance(body, Response):
            return body
        parsed = await lane.offload(_parse_events, svc, body, True)
        if isinstance(parsed, Response):
            return parsed
        events = parsed
        for a in range(0, len(events), edge.batch_chunk):
            chunk, spent = await lane.run(ScoringLane.BATCH, _timed, svc.scorer.score_many, events[a : a + edge.batch_chunk])
            scores += chunk
            # A chunk holds the GIL most of its time; on a busy host the OS may also preempt the
            # thread holding it. Pausing (in proportion to the scoring itself, not to the wait in
            # the lane) leaves the event loop stretches with no contention at all.
            if a + edge.batch_chunk < len(events):
                await asyncio.sleep(spent * (1 / edge.batch_share - 1))
    except ClientDisconnect:
        return Response(status_code=499)
    except Exception:  # the chunks already scored keep their scores; the rest fail open
        log.exception("scoring failed; failing open for the rest of this batch")
        svc.metrics.error("internal")
        unscored = _request_ids(body, events, True)[len(scores) :]
        return JSONResponse([s.model_dump(exclude_none=True) for s in scores] + fail_open_scores(unscored, svc.scorer.model_version))
    finally:
        lane.batches_in_flight -= 1
    await lane.run(ScoringLane.BATCH, _record, svc, scores, t0)
    return Response(await lane.offload(_render, scores), media_type="application/json")


def _render(scores: list[Score]) -> bytes:
    return json.dumps([s.model_dump(exclude_none=True) for s in scores], ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class _OpenApi30(GenerateJsonSchema):
    """JSON schema a fuzzer can read as OpenAPI 3.0: an optional field is absent, never null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default", ...) is None:
            del out["default"]
        return out


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local $ref replaced by its definition (the event's are not
    recursive): a mounted app's paths cannot add components to BentoML's document."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _schema(model: type[Event] | type[Score]) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_OpenApi30)
    return _inline(schema, schema.get("$defs", {}))


def _error_response(description: str) -> dict[str, Any]:
    body = {"type": "object", "required": ["error", "field"], "properties": {"error": {"type": "string"}, "field": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": body}}}


def _operation(summary: str, request: dict[str, Any], answer: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI operation of a route; FastAPI merges it over what it infers (nothing, since
    the handlers take the raw request)."""
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {"description": "scored (or, on an internal fault, allow with reason moat_error)", "content": {"application/json": {"schema": answer}}},
            "400": _error_response("not strict JSON, or ambiguous framing"),
            "408": _error_response("body not received in time"),
            "413": _error_response("body or batch too large"),
            "415": _error_response("Content-Type is not application/json"),
            "422": _error_response("an event does not follow the contract; `field` names it"),
            **extra,
        },
    }


class Routes(FastAPI):
    """A FastAPI app, which BentoML reads the routes' OpenAPI operations from; its POST routes
    are served from here directly. The handlers take the raw request and answer every fault
    themselves, so FastAPI's per-request work (its middleware, dependency solving) bought
    nothing and cost about 5% of a call's CPU. Anything else (a GET, a wrong path) goes through
    FastAPI as usual."""

    direct: dict[str, Callable[[Request], Awaitable[Response]]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            handler = self.direct.get(path[len(root) :] if root and path.startswith(root) else path)
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def build_app(current_service: Callable[[], ScoringService], edge: EdgeSettings | None = None) -> FastAPI:
    """The routes, reading the service through `current_service` (BentoML's lookup in
    production; tests pass their own)."""
    edge = edge or EdgeSettings()
    lane = ScoringLane()
    singles = SingleCalls(lane, edge.coalesce, edge.score_inline, edge.coalesce_wait_ms / 1000)
    app = Routes(title="moat", docs_url=None, redoc_url=None, openapi_url=None)
    event, score = _schema(Event), _schema(Score)

    async def score_one(request: Request) -> Response:
        return await _handle_one(current_service(), singles, edge, request)

    async def score_batch(request: Request) -> Response:
        return await _handle_batch(current_service(), lane, edge, request)

    app.add_api_route("/score", score_one, methods=["POST"], openapi_extra=_operation("Score one request event", event, score, {}))
    batch_ops = _operation(
        "Score a list of request events, in order",
        {"type": "array", "items": event},
        {"type": "array", "items": score},
        {"429": _error_response("too many batches in flight; retry after Retry-After seconds")},
    )
    app.add_api_route("/score/batch", score_batch, methods=["POST"], openapi_extra=batch_ops)
    app.direct = {"/score": score_one, "/score/batch": score_batch}
    return app


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
        # The event loop and the scoring lane's thread share the GIL. A request crosses between
        # them a few times, and each crossing may wait a whole switch interval while a batch
        # chunk runs in the lane (5 ms by default: 40 ms at p50 under a batch flood).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.refrozen = False
        log.info("moat scorer ready: model %s, state %s, mode %s", self.scorer.model_version, self.settings.state, self.settings.mode)

    def __is_ready__(self) -> bool:
        return self.scorer is not None
