"""Gateway client for the scoring service, sync and async.

It reuses one connection pool and gives each call one total deadline (50 ms by default): the
whole exchange, connect to last byte, must fit in it, so a server that trickles its answer
cannot hold the gateway longer than a silent one. When Moat cannot give a usable score in time
the client fails open (allow; the default) or closed (block) by setting, marks the answer
degraded and counts it, by cause, in moat_client_fail_open / moat_client_fail_closed. Every
reply has a defined outcome and none raises, except one: Moat's own 400/413/422 for an invalid
event, which is the caller's bug and raises InvalidEvent.

  cause        what happened
  timeout      the deadline passed before the whole answer arrived
  unreachable  no connection, or it broke mid-exchange
  status       any other status (5xx, 408, 429, an HTML 400 from a proxy, ...)
  malformed    a 200 that is not a contract score for this request (not JSON, no `risk`, wrong
               types, out of range, another request's id)
  unscored     a 200 that Moat itself marks unscored (moat_error, moat_overloaded)
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Literal

import httpx
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from moat.models.events import Event
from moat.serving.fail_open import UNSCORED_REASONS

CAUSES = ("timeout", "unreachable", "status", "malformed", "unscored")
FAIL_OPEN = Counter("moat_client_fail_open", "calls answered allow because Moat gave no usable score in time", ["cause"])
FAIL_CLOSED = Counter("moat_client_fail_closed", "calls answered block because Moat gave no usable score in time", ["cause"])
for _cause in CAUSES:  # every series exists from the start, so alerts see zeros
    FAIL_OPEN.labels(cause=_cause)
    FAIL_CLOSED.labels(cause=_cause)
UNAVAILABLE = "moat_unavailable"
# Statuses Moat answers for an event that breaks the contract; only in Moat's error shape do they
# mean the caller's bug (a proxy's HTML 400 says nothing about the event).
INVALID_EVENT_STATUSES = (400, 413, 422)
Cause = Literal["timeout", "unreachable", "status", "malformed", "unscored"]


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_CLIENT_", extra="ignore")

    url: str = "http://localhost:3000"
    timeout_s: float = Field(default=0.05, gt=0, description="total deadline of one call, connect to last byte")
    fail_open: bool = True
    max_connections: int = Field(default=64, ge=1)


class ClientScore(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str
    risk: float = Field(ge=0, le=1)
    action: Literal["allow", "throttle", "perturb", "block"]
    reasons: list[str]
    model_version: str | None = None
    scope: str | None = None
    shadow_action: str | None = None
    degraded: bool = False  # True when this answer is the client's fail-open/closed default


class InvalidEvent(ValueError):
    pass


class _Fallback(Exception):
    def __init__(self, cause: Cause) -> None:
        super().__init__(cause)
        self.cause = cause


def _body(event: Event | dict[str, Any]) -> dict[str, Any]:
    return event.model_dump(exclude_none=True) if isinstance(event, Event) else event


JSON_HEADERS = {"content-type": "application/json"}


def _payload(event: Event | dict[str, Any]) -> bytes:
    """The event as ASCII-escaped JSON. A lone surrogate is valid in a Python str and Moat reads
    its escape, but it cannot be encoded as UTF-8, which httpx's `json=` does: the call raised
    where it must fail open or closed."""
    return json.dumps(_body(event)).encode()


def _request_id(event: Event | dict[str, Any]) -> str:
    return event.request_id if isinstance(event, Event) else str(event.get("request_id", ""))


def _moat_error(content: bytes) -> str | None:
    """The message of Moat's own error answer, or None when the body is not one."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("field"), str):
        return data["error"]
    return None


class _Base:
    def __init__(self, settings: ClientSettings | None = None, **overrides: Any) -> None:
        self.settings = ClientSettings.model_validate({**(settings or ClientSettings()).model_dump(), **overrides})

    def fallback(self, event: Event | dict[str, Any], cause: Cause) -> ClientScore:
        """The fail-open (allow) or fail-closed (block) answer when Moat gives none, counted."""
        rid = _request_id(event)
        if self.settings.fail_open:
            FAIL_OPEN.labels(cause=cause).inc()
            return ClientScore(request_id=rid, risk=0.0, action="allow", reasons=[UNAVAILABLE], degraded=True)
        FAIL_CLOSED.labels(cause=cause).inc()
        return ClientScore(request_id=rid, risk=1.0, action="block", reasons=[UNAVAILABLE], degraded=True)

    def _parse(self, event: Event | dict[str, Any], status: int, content: bytes) -> ClientScore:
        if status in INVALID_EVENT_STATUSES and (message := _moat_error(content)) is not None:
            raise InvalidEvent(message)
        if status != 200:
            return self.fallback(event, "status")
        try:
            score = ClientScore.model_validate_json(content, strict=True)
        except ValidationError:  # also covers a body that is not JSON at all
            return self.fallback(event, "malformed")
        if score.request_id != _request_id(event):
            return self.fallback(event, "malformed")
        if UNSCORED_REASONS.intersection(score.reasons):
            return self.fallback(event, "unscored")
        return score.model_copy(update={"degraded": False})

    def _client_options(self) -> dict[str, Any]:
        n = self.settings.max_connections
        # The per-operation timeout only bounds what a call abandoned at its deadline still holds.
        return {"base_url": self.settings.url, "timeout": self.settings.timeout_s, "limits": httpx.Limits(max_connections=n, max_keepalive_connections=n)}


class MoatClient(_Base):
    """Blocking client. httpx's sync timeouts are per operation, so each exchange runs on a
    worker thread and the caller waits for it only until the deadline; the worker stops reading
    at the deadline too, so an abandoned exchange frees its connection within one more read."""

    def __init__(self, settings: ClientSettings | None = None, transport: httpx.BaseTransport | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._http = httpx.Client(transport=transport, **self._client_options())
        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_connections, thread_name_prefix="moat-client")

    def score(self, event: Event | dict[str, Any]) -> ClientScore:
        deadline = time.monotonic() + self.settings.timeout_s
        job = self._pool.submit(self._exchange, _payload(event), deadline)
        try:
            status, content = job.result(timeout=self.settings.timeout_s)
        except (FuturesTimeout, httpx.TimeoutException):
            return self.fallback(event, "timeout")
        except _Fallback as exc:
            return self.fallback(event, exc.cause)
        except httpx.HTTPError:
            return self.fallback(event, "unreachable")
        return self._parse(event, status, content)

    def _exchange(self, body: bytes, deadline: float) -> tuple[int, bytes]:
        with self._http.stream("POST", "/score", content=body, headers=JSON_HEADERS) as resp:
            content = bytearray()
            for chunk in resp.iter_bytes():
                content += chunk
                if time.monotonic() > deadline:
                    raise _Fallback("timeout")
            return resp.status_code, bytes(content)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> "MoatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMoatClient(_Base):
    """Async client: the whole exchange runs under one asyncio deadline, and a call cut at it
    closes its connection."""

    def __init__(self, settings: ClientSettings | None = None, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._http = httpx.AsyncClient(transport=transport, **self._client_options())

    async def score(self, event: Event | dict[str, Any]) -> ClientScore:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                resp = await self._http.post("/score", content=_payload(event), headers=JSON_HEADERS)
        except (TimeoutError, httpx.TimeoutException):
            return self.fallback(event, "timeout")
        except httpx.HTTPError:
            return self.fallback(event, "unreachable")
        return self._parse(event, resp.status_code, resp.content)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncMoatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
