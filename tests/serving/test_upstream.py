"""The proxy's HTTP/1.1 client (serving/upstream.py) against scripted servers: keep-alive reuse,
the ways an answer can be framed, and the ways an upstream can fail, under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvloop

from moat.serving.upstream import HIGH_WATER, Pool, UpstreamError

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def on_both_loops(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test under asyncio's loop and under uvloop's (which `moat proxy` serves
    with: its transports call back at other moments)."""

    def test(loop: str, *args: object, **kwargs: object) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop) as runner:
            runner.run(fn(*args, **kwargs))

    sig = inspect.signature(fn)
    test.__signature__ = sig.replace(parameters=[inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD), *sig.parameters.values()])  # type: ignore[attr-defined]
    test.__name__, test.__doc__ = fn.__name__, fn.__doc__
    return pytest.mark.parametrize("loop", ["asyncio", "uvloop"])(test)


@dataclass
class Server:
    """What a scripted server saw: one list of requests (raw heads and bodies) per connection."""

    port: int = 0
    connections: list[list[bytes]] = field(default_factory=list)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Server], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return head + (await reader.readexactly(length) if length else b"")


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections.append([])
        try:
            await script(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server


def answering(*answers: bytes, close_after: bool = False) -> Script:
    """Answers each request on a connection with the next of `answers` (the last repeats)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        i = 0
        while (req := await read_request(reader)) is not None:
            server.connections[-1].append(req)
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
            if close_after:
                return

    return script


async def fetch(pool: Pool, method: str = "POST", target: bytes = b"/v1/x", body: bytes = b"{}") -> tuple[int, bytes]:
    answer = await pool.request(method, target, [(b"content-type", b"application/json"), (b"connection", b"close"), (b"expect", b"100-continue")], body)
    data = await answer.read()
    answer.release()
    return answer.status, data


@on_both_loops
async def test_connections_are_kept_alive_and_reused() -> None:
    async with scripted(answering(OK)) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        assert [await fetch(pool) for _ in range(3)] == [(200, b"{}")] * 3
        await pool.aclose()
    assert [len(c) for c in server.connections] == [3]
    head = server.connections[0][0]
    # The client writes its own framing and Host; hop-by-hop headers of the caller do not pass.
    assert head.startswith(b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:") and b"content-length: 2\r\n" in head
    assert b"connection: close" not in head and b"expect" not in head


@pytest.mark.parametrize(
    "answer, status, body, reused",
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", 200, b"abcdefg", True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", 200, b"until the end", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
        (b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, b"ok", True),
    ],
    ids=["chunked", "until close", "204", "103 then 200"],
)
@on_both_loops
async def test_answer_framings(answer: bytes, status: int, body: bytes, reused: bool) -> None:
    async with scripted(answering(answer, close_after=not reused)) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        assert [await fetch(pool) for _ in range(2)] == [(status, body)] * 2
        await pool.aclose()
    assert len(server.connections) == (1 if reused else 2)


@on_both_loops
async def test_head_answers_end_at_their_headers() -> None:
    async with scripted(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}", read_timeout_s=2)
        assert await fetch(pool, method="HEAD", body=b"") == (200, b"")
        await pool.aclose()


@on_both_loops
async def test_a_base_path_prefixes_every_target() -> None:
    async with scripted(answering(OK)) as server:
        pool = Pool(f"http://user@127.0.0.1:{server.port}/openai/")
        await fetch(pool, target=b"/v1/chat/completions?x=%2F")
        await pool.aclose()
    assert server.connections[0][0].startswith(b"POST /openai/v1/chat/completions?x=%2F HTTP/1.1\r\nhost: 127.0.0.1:")


@on_both_loops
async def test_a_connection_closed_while_idle_is_not_reused() -> None:
    async def close_soon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        server.connections[-1].append(await read_request(reader) or b"")
        writer.write(OK)  # says keep-alive, then closes while the client holds it idle
        await writer.drain()

    async with scripted(close_soon) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool) == (200, b"{}")
        await asyncio.sleep(0.1)
        assert await fetch(pool) == (200, b"{}")
        await pool.aclose()
    assert len(server.connections) == 2


@on_both_loops
async def test_a_request_written_as_the_upstream_closes_is_retried_once() -> None:
    """The race a keep-alive client cannot avoid: the upstream closes an idle connection just as
    a request is written to it, without reading it. Retried on a new connection."""

    async def close_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        first = await read_request(reader)
        server.connections[-1].append(first or b"")
        writer.write(OK)
        await writer.drain()
        if len(server.connections) == 1:
            await read_request(reader)  # the second request arrives, and the connection closes unanswered
            return
        while (req := await read_request(reader)) is not None:
            server.connections[-1].append(req)
            writer.write(OK)

    async with scripted(close_on_second) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        assert await fetch(pool) == (200, b"{}")
        assert await fetch(pool) == (200, b"{}")
        await pool.aclose()
    assert [len(c) for c in server.connections] == [1, 1]


@on_both_loops
async def test_a_new_connection_that_closes_unanswered_is_an_error_not_a_retry_loop() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader)

    async with scripted(hang_up) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        with pytest.raises(UpstreamError, match="closed before the answer"):
            await fetch(pool)
    assert len(server.connections) == 1


@pytest.mark.parametrize(
    "answer, error",
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", "in the middle of the answer"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed answer"),
    ],
)
@on_both_loops
async def test_broken_answers_raise(answer: bytes, error: str) -> None:
    async with scripted(answering(answer, close_after=True)) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        with pytest.raises(UpstreamError, match=error):
            await fetch(pool)


@on_both_loops
async def test_a_silent_upstream_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12")
        await writer.drain()
        await asyncio.sleep(5)

    async with scripted(stall) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}", read_timeout_s=0.2)
        answer = await pool.request("GET", b"/", [], b"")
        with pytest.raises(UpstreamError, match="no data from the upstream"):
            await answer.read()
        answer.release()


@on_both_loops
async def test_an_unreachable_upstream_is_an_upstream_error() -> None:
    pool = Pool("http://127.0.0.1:9", connect_timeout_s=2)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await fetch(pool)


@on_both_loops
async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    big = bytes(range(256)) * (3 * HIGH_WATER // 256)
    async with scripted(answering(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        answer = await pool.request("GET", b"/big", [], b"")
        await asyncio.sleep(0.2)  # the upstream fills the buffer past the high-water mark meanwhile
        got = b""
        async for chunk in answer.chunks():
            got += chunk
            await asyncio.sleep(0)
        answer.release()
        assert got == big
        assert await fetch(pool) == (200, big)  # the connection went back to the pool, usable
        await pool.aclose()
    assert len(server.connections) == 1


@on_both_loops
async def test_an_answer_left_unread_closes_its_connection() -> None:
    async with scripted(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789")) as server:
        pool = Pool(f"http://127.0.0.1:{server.port}")
        answer = await pool.request("GET", b"/", [], b"")
        answer.release()  # not read: the connection cannot carry another exchange
        assert await fetch(pool) == (200, b"0123456789")
        await pool.aclose()
    assert len(server.connections) == 2


@pytest.mark.parametrize("url", ["ftp://host/", "not a url", "http:///path"])
def test_a_malformed_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected an http"):
        Pool(url)
