"""The answer the service gives when an internal fault stops it from scoring: allow, unscored.

It is a gateway's default and also a way past Moat, so it must be exact and recognisable: a
contract-valid score (score.schema.json) per request event, marked with the one reason code
MOAT_ERROR that clients, dashboards and tests look for. Kept free of heavy imports so the
gateway client can share the constant.
"""

from __future__ import annotations

from typing import Any

MOAT_ERROR = "moat_error"


def fail_open_scores(request_ids: list[str], model_version: str) -> list[dict[str, Any]]:
    """One `allow` score per request id, in order."""
    return [{"request_id": rid, "risk": 0.0, "action": "allow", "reasons": [MOAT_ERROR], "model_version": model_version} for rid in request_ids]
