"""The four actions a decision can carry, one class each behind one interface.

A gateway looks the decision's action up here and calls the same four methods whatever it is:
`reply()` (answer now instead of forwarding), `request(body)` (the body to forward),
`response(request, body)` (the upstream's JSON answer as the client should see it) and
`stream(request)` (a transformer for the upstream's event stream). `request` raises
InvalidRequest (a ValueError naming the field) for a body it cannot read; the gateway answers
that with `invalid_request(str(err))`, a 400, never a 5xx."""

from __future__ import annotations

from typing import Any, ClassVar

from moat.serving.actions.logprobs import ResponsePerturber, SSETransformer, request_seed
from moat.serving.actions.replies import Reply, openai_error
from moat.serving.actions.request import perturb_request
from moat.serving.actions.settings import ActionSettings
from moat.serving.actions.watermark import TextWatermarker


class PassThrough:
    """A stream transformer that changes nothing, with SSETransformer's interface."""

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def flush(self) -> bytes:
        return b""


class Action:
    """Forward unchanged: the base behaviour every action starts from."""

    name: ClassVar[str]

    def __init__(self, settings: ActionSettings) -> None:
        self.settings = settings

    def reply(self) -> Reply | None:
        return None

    def request(self, body: dict[str, Any], path: str | None = None) -> dict[str, Any]:
        """The request as forwarded; `path` (the API's URL path, when known) says which fields it has."""
        return body

    def response(self, request: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return body

    def stream(self, request: dict[str, Any]) -> SSETransformer | PassThrough:
        return PassThrough()


ACTIONS: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    ACTIONS[cls.name] = cls
    return cls


@register
class Allow(Action):
    name = "allow"


@register
class Throttle(Action):
    name = "throttle"

    def reply(self) -> Reply:
        s = self.settings.throttle.retry_after_s
        return openai_error(
            429, f"Rate limit reached for this account. Please try again in {s}s.", "requests", "rate_limit_exceeded", headers={"Retry-After": str(s)}
        )


@register
class Perturb(Action):
    name = "perturb"

    def request(self, body: dict[str, Any], path: str | None = None) -> dict[str, Any]:
        return perturb_request(body, self.settings.perturb, path)

    def _perturber(self, request: dict[str, Any]) -> ResponsePerturber:
        p, w = self.settings.perturb, self.settings.watermark
        marker = TextWatermarker.from_settings(w) if w.enabled else None
        return ResponsePerturber(request_seed(p.secret.get_secret_value().encode(), request), p, watermark=marker)

    def response(self, request: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return self._perturber(request).body(body)

    def stream(self, request: dict[str, Any]) -> SSETransformer:
        return SSETransformer(self._perturber(request))


@register
class Block(Action):
    name = "block"

    def reply(self) -> Reply:
        return openai_error(403, "This account's access to the API has been suspended.", "request_forbidden", "access_denied")


def get_action(name: str, settings: ActionSettings | None = None) -> Action:
    cls = ACTIONS.get(name)
    if cls is None:
        raise ValueError(f"action: unknown {name!r}, expected one of {', '.join(ACTIONS)}")
    return cls(settings or ActionSettings())


def reply_for(name: str, settings: ActionSettings | None = None) -> Reply | None:
    """(status, headers, body) to answer with instead of forwarding, or None to forward."""
    return get_action(name, settings).reply()
