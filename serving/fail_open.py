"""The answer the service gives when it cannot score a call: allow, unscored.

It is a gateway's default and also a way past Moat, so it must be exact and recognisable: a
contract-valid score (score.schema.json) per request event, marked with one reason code that
clients, dashboards and tests look for: MOAT_ERROR when an internal fault stopped scoring,
MOAT_OVERLOADED when the call was shed because too many were already waiting for the scorer.
Kept free of heavy imports so the gateway client can share the constants.
"""

from __future__ import annotations

from typing import Any

MOAT_ERROR = "moat_error"
MOAT_OVERLOADED = "moat_overloaded"
UNSCORED_REASONS = frozenset({MOAT_ERROR, MOAT_OVERLOADED})


def fail_open_scores(request_ids: list[str], model_version: str, reason: str = MOAT_ERROR) -> list[dict[str, Any]]:
    """One `allow` score per request id, in order."""
    return [{"request_id": rid, "risk": 0.0, "action": "allow", "reasons": [reason], "model_version": model_version} for rid in request_ids]
