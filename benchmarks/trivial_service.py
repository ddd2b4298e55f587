"""A trivial BentoML endpoint (parse JSON, answer a constant) to measure Moat's HTTP overhead
against: it is served the same way (a Starlette route mounted on a BentoML service)."""

from __future__ import annotations

import json

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def score(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    return JSONResponse({"request_id": body.get("request_id", ""), "risk": 0.0, "action": "allow", "reasons": []})


http = Starlette(routes=[Route("/score", score, methods=["POST"])])


@bentoml.asgi_app(http, path="/")
@bentoml.service(name="trivial", workers=1)
class Trivial:
    pass
