"""Short-circuit answers in the OpenAI error shape: {"error": {message, type, param, code}}.

OpenAI's SDKs raise their own exception per status (RateLimitError for 429,
PermissionDeniedError for 403) and read `error.message` from this body. Never a 5xx: clients
and gateways retry 5xx, and a retried block becomes a flood; Envoy also reads 5xx from an
authorisation service as its own failure."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def __post_init__(self) -> None:
        if not 400 <= self.status < 500:
            raise ValueError(f"status: a Moat reply is a 4xx, got {self.status}")


def openai_error(status: int, message: str, type_: str, code: str, param: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, body)


def invalid_request(message: str, param: str | None = None) -> Reply:
    """400 for a body the request caps cannot read (InvalidRequest's message names the field)."""
    return openai_error(400, message, "invalid_request_error", "invalid_request", param)
