"""Helpers for the gateway tests: a small OpenAI-compatible upstream, a helper that runs any ASGI
app in a uvicorn thread on a free port, and Scorers whose thresholds force each action.

The upstream answers /v1/chat/completions with and without `stream`, with logprobs when asked
(one entry per token, `top_logprobs` alternatives each), and records what it received so a
test can check what the gateway forwarded. Model "fail-400" gets a 400 in OpenAI's error shape
and model "fail-500" a 500: what a gateway must pass through unchanged.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

NEVER = 1.0001  # above any risk: the action at this threshold is never taken
# action -> (throttle, perturb, block) thresholds that make the shipped model take it
THRESHOLDS = {
    "allow": (NEVER, NEVER, NEVER),
    "throttle": (0.0, NEVER, NEVER),
    "perturb": (0.0, 0.0, NEVER),
    "block": (0.0, 0.0, 0.0),
}
TOKENS = ["Hello", ",", " world", "!"]
# Deliberately long decimals: rounding by a perturbation shows up in what the client receives.
LOGPROBS = [-0.0123456789, -1.2345678901, -0.3456789012, -2.3456789012]


# Below the kernel's ephemeral range (32768-60999 on Linux). A port found with bind(0) is free
# only until the service binds it, and in between BentoML's process manager may be handed the
# same port by bind(0) for its own control socket: a CI run failed so ("Address already in
# use" from circus). Drawn at random, so that two tests choosing at once rarely meet.
PORTS = range(20000, 32768)


def free_port() -> int:
    """A localhost port that is free now, outside the range bind(0) hands out."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free localhost port in {PORTS.start}-{PORTS.stop - 1}")


@contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a daemon thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def forced_scorer(action: str) -> Scorer:
    t, p, b = THRESHOLDS[action]
    return Scorer(ServingSettings(throttle_threshold=t, perturb_threshold=p, block_threshold=b))


@dataclass
class Seen:
    """What the upstream received, newest last."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _top(i: int, k: int) -> list[dict[str, Any]]:
    own = {"token": TOKENS[i], "logprob": LOGPROBS[i], "bytes": list(TOKENS[i].encode())}
    alts = [{"token": f"alt{j}", "logprob": LOGPROBS[i] - 0.7654321 * j, "bytes": list(f"alt{j}".encode())} for j in range(1, k)]
    return ([own] + alts)[:k]


def _logprob_entry(i: int, k: int) -> dict[str, Any]:
    return {"token": TOKENS[i], "logprob": LOGPROBS[i], "bytes": list(TOKENS[i].encode()), "top_logprobs": _top(i, k)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": f"fake_{status}"}}, status_code=status)


def build_upstream(seen: Seen) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.bodies.append(body)
        seen.headers.append(dict(request.headers))
        model = body.get("model", "fake")
        if model.startswith("fail-"):
            return _error(int(model.removeprefix("fail-")), f"upstream refused model {model}")
        want = bool(body.get("logprobs"))
        k = int(body.get("top_logprobs") or 0)
        base = {"id": "chatcmpl-fake", "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            logprobs = {"content": [_logprob_entry(i, k) for i in range(len(TOKENS))], "refusal": None} if want else None
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(TOKENS), "refusal": None}, "logprobs": logprobs, "finish_reason": "stop"}
            usage = {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS)}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            for i, tok in enumerate(TOKENS):
                delta = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
                logprobs = {"content": [_logprob_entry(i, k)], "refusal": None} if want else None
                chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            end = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(end)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def responses(request: Request) -> Response:
        """The Responses API: output_text parts with logprobs when `include` asks for them."""
        body = await request.json()
        seen.bodies.append(body)
        seen.headers.append(dict(request.headers))
        model = body.get("model", "fake")
        want = "message.output_text.logprobs" in (body.get("include") or [])
        k = int(body.get("top_logprobs") or 0)
        entries = [_logprob_entry(i, k) for i in range(len(TOKENS))] if want else []
        part = {"type": "output_text", "text": "".join(TOKENS), "annotations": [], "logprobs": entries}
        item = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant", "content": [part]}
        usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(TOKENS), "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5 + len(TOKENS)}
        done = {"id": "resp_fake", "object": "response", "created_at": 1_700_000_000, "status": "completed", "model": model, "output": [item], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage}
        if not body.get("stream"):
            return JSONResponse(done)

        async def events() -> AsyncIterator[bytes]:
            started = {**done, "status": "in_progress", "output": [], "usage": None}
            stream = [{"type": "response.created", "response": started}, {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "content": []}}]
            stream.append({"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": {**part, "text": "", "logprobs": []}})
            for i, tok in enumerate(TOKENS):
                stream.append({"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": tok, "logprobs": entries[i : i + 1]})
            stream.append({"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": part["text"], "logprobs": entries})
            stream.append({"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": part})
            stream.append({"type": "response.output_item.done", "output_index": 0, "item": item})
            stream.append({"type": "response.completed", "response": done})
            for n, event in enumerate(stream):
                yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': n})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "test"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/responses", responses, methods=["POST"]), Route("/v1/models", models, methods=["GET"])])
