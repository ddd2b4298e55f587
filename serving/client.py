"""Gateway client for the scoring service, sync and async.

It reuses one connection pool, gives each call a short timeout (50 ms by default) and, when
Moat cannot answer in time, fails open (allow; the default, counted in its own metric) or
closed (block) by setting. An invalid event is the caller's bug and raises InvalidEvent.
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import Counter
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from moat.models.events import Event
from moat.serving.fail_open import MOAT_ERROR

FAIL_OPEN = Counter("moat_client_fail_open", "calls answered allow because Moat was unreachable, slow or faulty")
FAIL_CLOSED = Counter("moat_client_fail_closed", "calls answered block because Moat was unreachable, slow or faulty")
UNAVAILABLE = "moat_unavailable"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_CLIENT_", extra="ignore")

    url: str = "http://localhost:3000"
    timeout_s: float = 0.05
    fail_open: bool = True
    max_connections: int = 64


class ClientScore(BaseModel):
    request_id: str
    risk: float
    action: str
    reasons: list[str]
    model_version: str | None = None
    scope: str | None = None
    shadow_action: str | None = None
    degraded: bool = False  # True when this answer is the client's fail-open/closed default


class InvalidEvent(ValueError):
    pass


def _body(event: Event | dict[str, Any]) -> dict[str, Any]:
    return event.model_dump(exclude_none=True) if isinstance(event, Event) else event


class _Base:
    def __init__(self, settings: ClientSettings | None = None, **overrides: Any) -> None:
        self.settings = (settings or ClientSettings()).model_copy(update=overrides)

    def _fallback(self, event: Event | dict[str, Any]) -> ClientScore:
        rid = event.request_id if isinstance(event, Event) else str(event.get("request_id", ""))
        if self.settings.fail_open:
            FAIL_OPEN.inc()
            return ClientScore(request_id=rid, risk=0.0, action="allow", reasons=[UNAVAILABLE], degraded=True)
        FAIL_CLOSED.inc()
        return ClientScore(request_id=rid, risk=1.0, action="block", reasons=[UNAVAILABLE], degraded=True)

    def _parse(self, event: Event | dict[str, Any], resp: httpx.Response) -> ClientScore:
        if resp.status_code in (400, 413, 422):
            raise InvalidEvent(resp.json().get("error", resp.text))
        if resp.status_code != 200 or "action" not in resp.text:
            return self._fallback(event)
        data = resp.json()
        if data.get("reasons") == [MOAT_ERROR]:
            return self._fallback(event)
        return ClientScore.model_validate(data)

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=self.settings.max_connections, max_keepalive_connections=self.settings.max_connections)


class MoatClient(_Base):
    def __init__(self, settings: ClientSettings | None = None, transport: httpx.BaseTransport | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._http = httpx.Client(base_url=self.settings.url, timeout=self.settings.timeout_s, limits=self._limits(), transport=transport)

    def score(self, event: Event | dict[str, Any]) -> ClientScore:
        try:
            resp = self._http.post("/score", json=_body(event))
        except httpx.HTTPError:
            return self._fallback(event)
        return self._parse(event, resp)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "MoatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMoatClient(_Base):
    def __init__(self, settings: ClientSettings | None = None, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self._http = httpx.AsyncClient(base_url=self.settings.url, timeout=self.settings.timeout_s, limits=self._limits(), transport=transport)

    async def score(self, event: Event | dict[str, Any]) -> ClientScore:
        try:
            resp = await self._http.post("/score", json=_body(event))
        except httpx.HTTPError:
            return self._fallback(event)
        return self._parse(event, resp)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncMoatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
