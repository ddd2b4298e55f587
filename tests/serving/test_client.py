"""The gateway client against a tiny local HTTP server that answers each case's way: every reply
has a defined outcome (the score, a fail-open/closed default counted by cause, or InvalidEvent),
and one total deadline holds even against a server that trickles its answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest

from moat.serving.client import FAIL_CLOSED, FAIL_OPEN, AsyncMoatClient, ClientScore, InvalidEvent, MoatClient
from tests.conftest import CONTRACT

EVENT = json.loads((CONTRACT / "example_trace.jsonl").read_text().splitlines()[0])
OK = {"request_id": EVENT["request_id"], "risk": 0.7, "action": "throttle", "reasons": ["machine_timing", "scope:account"], "model_version": "m"}


def reply(status: int, body: bytes, content_type: str = "application/json") -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


def score(**changes: object) -> Callable[[BaseHTTPRequestHandler], None]:
    return reply(200, json.dumps({**OK, **changes}).encode())


# The deadline of these tests: far above what any answer of the local server takes on a loaded CI
# machine, far below what the slow cases take.
DEADLINE_S = 1.0


def trickle(h: BaseHTTPRequestHandler) -> None:
    """A valid score, one byte every 40 ms (4 s in all): each read is well within the read
    timeout, the whole is not. A per-read timeout would return this score as if all were well."""
    body = json.dumps(OK).encode()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    for i in range(len(body)):
        h.wfile.write(body[i : i + 1])
        h.wfile.flush()
        time.sleep(0.04)


def silent(h: BaseHTTPRequestHandler) -> None:
    time.sleep(3 * DEADLINE_S)
    score()(h)


def hang_up(h: BaseHTTPRequestHandler) -> None:
    h.connection.shutdown(socket.SHUT_RDWR)


HANDLERS: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
    "ok": score(),
    "ok, integer risk": score(risk=1),
    "trickle": trickle,
    "silent": silent,
    "hang up": hang_up,
    "503": reply(503, b'{"error": "unavailable"}'),
    "429": reply(429, b'{"error": "busy", "field": "body"}'),
    "408": reply(408, b'{"error": "slow body", "field": "body"}'),
    "html 400": reply(400, b"<html><body>400 Bad Request</body></html>", "text/html"),
    "html 200": reply(200, b"<html>ok</html>", "text/html"),
    "empty 200": reply(200, b""),
    "200 json list": reply(200, b"[1, 2]"),
    "200 without risk": score(risk=None),
    "risk as a string": score(risk="0.7"),
    "risk above 1": score(risk=1.5),
    "risk NaN": reply(200, json.dumps({**OK, "risk": float("nan")}).encode()),
    "unknown action": score(action="nuke"),
    "reasons not a list": score(reasons="x"),
    "another request's id": score(request_id="someone-else"),
    "moat_error": score(risk=0.0, action="allow", reasons=["moat_error"]),
    "moat_overloaded": score(risk=0.0, action="allow", reasons=["moat_overloaded"]),
    "moat 422": reply(422, b'{"error": "invalid event: ts: Input should be a valid number", "field": "ts"}'),
    "moat 413": reply(413, b'{"error": "request body exceeds 1048576 bytes", "field": "body"}'),
}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        case = unquote(self.path.split("/")[1])
        try:
            HANDLERS[case](self)
        except (BrokenPipeError, ConnectionResetError):  # the client left at its deadline
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# (case, outcome, cause): outcome "score" passes the answer through, "fallback" is the configured
# default counted under `cause`, "invalid" raises InvalidEvent.
CASES = [
    ("ok", "score", None),
    ("ok, integer risk", "score", None),
    ("trickle", "fallback", "timeout"),
    ("silent", "fallback", "timeout"),
    ("hang up", "fallback", "unreachable"),
    ("503", "fallback", "status"),
    ("429", "fallback", "status"),
    ("408", "fallback", "status"),
    ("html 400", "fallback", "status"),
    ("html 200", "fallback", "malformed"),
    ("empty 200", "fallback", "malformed"),
    ("200 json list", "fallback", "malformed"),
    ("200 without risk", "fallback", "malformed"),
    ("risk as a string", "fallback", "malformed"),
    ("risk above 1", "fallback", "malformed"),
    ("risk NaN", "fallback", "malformed"),
    ("unknown action", "fallback", "malformed"),
    ("reasons not a list", "fallback", "malformed"),
    ("another request's id", "fallback", "malformed"),
    ("moat_error", "fallback", "unscored"),
    ("moat_overloaded", "fallback", "unscored"),
    ("moat 422", "invalid", None),
    ("moat 413", "invalid", None),
]
MODES = [(True, "allow", FAIL_OPEN), (False, "block", FAIL_CLOSED)]


def url(server: str, case: str) -> str:
    return f"{server}/{quote(case)}"


def check(result: ClientScore | InvalidEvent, outcome: str, cause: str | None, action: str, counter, before: float) -> None:
    if outcome == "invalid":
        assert isinstance(result, InvalidEvent)
        return
    assert isinstance(result, ClientScore), result
    assert result.request_id == EVENT["request_id"]
    if outcome == "score":
        assert (result.action, result.degraded) == (OK["action"], False)
    else:
        assert (result.action, result.degraded) == (action, True)
        assert counter.labels(cause=cause)._value.get() == before + 1


@pytest.mark.parametrize("fail_open, action, counter", MODES, ids=["fail open", "fail closed"])
@pytest.mark.parametrize("case, outcome, cause", CASES, ids=[c[0] for c in CASES])
def test_sync_client(server: str, case: str, outcome: str, cause: str | None, fail_open: bool, action: str, counter) -> None:
    before = counter.labels(cause=cause)._value.get() if cause else 0.0
    with MoatClient(url=url(server, case), fail_open=fail_open, timeout_s=DEADLINE_S) as client:
        try:
            result: ClientScore | InvalidEvent = client.score(EVENT)
        except InvalidEvent as exc:
            result = exc
    check(result, outcome, cause, action, counter, before)


@pytest.mark.parametrize("fail_open, action, counter", MODES, ids=["fail open", "fail closed"])
@pytest.mark.parametrize("case, outcome, cause", CASES, ids=[c[0] for c in CASES])
async def test_async_client(server: str, case: str, outcome: str, cause: str | None, fail_open: bool, action: str, counter) -> None:
    before = counter.labels(cause=cause)._value.get() if cause else 0.0
    async with AsyncMoatClient(url=url(server, case), fail_open=fail_open, timeout_s=DEADLINE_S) as client:
        try:
            result: ClientScore | InvalidEvent = await client.score(EVENT)
        except InvalidEvent as exc:
            result = exc
    check(result, outcome, cause, action, counter, before)


def test_default_deadline_is_50ms() -> None:
    assert MoatClient().settings.timeout_s == 0.05


def test_client_against_the_real_service(service_url: str) -> None:
    with MoatClient(url=service_url, timeout_s=5.0) as client:
        s = client.score(EVENT)
        assert s.request_id == "r1" and not s.degraded and 0 <= s.risk <= 1
        with pytest.raises(InvalidEvent, match="ts"):
            client.score({**EVENT, "ts": "yesterday"})


@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_lone_surrogate_in_the_text_is_sent_escaped_and_scored(service_url: str, client: str) -> None:
    """Valid in a Python str, and read by Moat as an escape; httpx's own JSON encoding raised on
    it (UTF-8), out of a call that must never raise."""
    import asyncio

    event = {**EVENT, "request_id": "sur", "prompt": "hi \ud800 there"}
    if client == "sync":
        with MoatClient(url=service_url, timeout_s=5.0) as c:
            s = c.score(event)
    else:

        async def go() -> ClientScore:
            async with AsyncMoatClient(url=service_url, timeout_s=5.0) as c:
                return await c.score(event)

        s = asyncio.run(go())
    assert s.request_id == "sur" and not s.degraded
