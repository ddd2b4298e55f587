"""The proxy's HTTP/1.1 client to its one upstream: a keep-alive pool of asyncio connections,
responses parsed by httptools (the parser uvicorn serves with).

Why not aiohttp: per forwarded request aiohttp spent about 0.3 ms of CPU (building its request
and response objects, multidicts, a stream reader), this client about 0.03 ms; on a proxy whose
whole budget is 2 ms that is a sixth of it. It does only what a reverse proxy to one base URL
needs: one request at a time per connection (no pipelining), bodies sent whole (the proxy has
already read them), answers streamed chunk by chunk with flow control, TLS for https.

A connection the upstream closed while it sat idle is noticed (EOF) and dropped; one that it
closes just as a request is written is retried once on a new connection, when not a byte of
the answer had arrived (the upstream never read that request). Any other failure before the
answer's headers is an UpstreamError, which the proxy answers 502."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

# Hop-by-hop headers (RFC 9110 7.6.1), and the ones this client writes itself. `expect` too: the
# body is already here, so a 100-continue exchange would only cost a round trip.
HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect"})
HIGH_WATER = 1 << 20  # bytes of answer buffered before reading from the upstream pauses
LOW_WATER = 1 << 18
IDLE_S = 4.0  # an idle connection older than this is not reused: uvicorn closes them at 5 s


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange before its answer's headers."""


class _Stale(UpstreamError):
    """A reused connection ended before any byte of the answer: the request was never read."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the exchange on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = time.monotonic()
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.received = False  # any byte of this exchange's answer
        self.head_done = False
        self.until_close = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.skip_body = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if not self.received:
                self._fail(_Stale("the connection closed before the answer began"))
            elif self.head_done and self.until_close:  # an answer delimited by the connection's end
                self.complete = True
            else:
                self._fail(UpstreamError("the connection closed in the middle of the answer"))
        self._wake()

    def pause_writing(self) -> None:  # request bodies are written whole; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes | None) -> None:
        self.headers.append((name, value or b""))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the final one follows
            self.headers = []
            return
        self.status = status
        self.head_done = True
        names = {k.lower() for k, _ in self.headers}
        # Neither a length nor chunks: the body runs to the end of the connection (RFC 9112 6.3).
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names and status not in (204, 304)
        if self.skip_body:  # the answer to HEAD has no body, whatever its Content-Length says
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.skip_body:
            return
        self.buffer.append(bytes(body))
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an interim answer
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- the exchange
    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until something happens: bytes, the end, or a failure."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self._waiter
        except TimeoutError as exc:
            self._fail(UpstreamError(f"no data from the upstream for {timeout_s} s"))
            raise UpstreamError(str(self.error)) from exc
        finally:
            self._waiter = None

    def take(self) -> bytes:
        chunk = self.buffer.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk


class Answer:
    """An upstream answer whose body is read as it arrives. Release or close it when done."""

    def __init__(self, pool: "Pool", conn: _Connection, read_timeout_s: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout_s
        self.status = conn.status
        self.raw_headers = conn.headers
        self._done = False

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        key = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.raw_headers if k.lower() == key), None)

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.buffer

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.buffer:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._timeout)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when the answer was read
        to its end and both sides keep it alive; otherwise it is closed (which also tells the
        upstream to stop generating)."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if self.at_eof and conn.keep_alive and conn.error is None and not conn.closed:
            self._pool.put(conn)
        else:
            self._pool.discard(conn)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._pool.discard(self._conn)


class Pool:
    """Keep-alive connections to one upstream, at most `limit` exchanges at once."""

    def __init__(self, base_url: str, connect_timeout_s: float = 10.0, read_timeout_s: float = 600.0, limit: int = 512, ssl_context: ssl.SSLContext | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"upstream: expected an http(s) URL, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/").encode("latin-1")
        self.authority = url.netloc.rpartition("@")[2].encode("idna")
        self.ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self.connect_timeout = connect_timeout_s
        self.read_timeout = read_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> Answer:
        """Send one request (`target`: the path and query under the base URL, as received) and
        wait for its answer's headers."""
        lines = [method.encode("latin-1"), b" ", self.prefix, target, b" HTTP/1.1\r\nhost: ", self.authority, b"\r\n"]
        for k, v in headers:
            if k.lower() not in HOP:
                lines += [k, b": ", v, b"\r\n"]
        if body or method in ("POST", "PUT", "PATCH"):
            lines += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        data = b"".join(lines) + b"\r\n" + body
        await self._slots.acquire()
        try:
            for attempt in (0, 1):
                conn = await self._connection()
                conn._reset()
                conn.skip_body = method == "HEAD"
                assert conn.transport is not None
                conn.transport.write(data)
                try:
                    while not conn.head_done:
                        if conn.error is not None:
                            raise conn.error
                        await conn.wait(self.read_timeout)
                except _Stale:
                    self.discard(conn, release=False)
                    if conn.reused and attempt == 0:
                        continue  # the upstream closed it as we wrote: it never read the request
                    raise
                except BaseException:
                    self.discard(conn, release=False)
                    raise
                return Answer(self, conn, self.read_timeout)
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                conn.reused = True
                return conn
            if conn.transport is not None:
                conn.transport.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}") from exc
        conn.transport = transport  # uvloop may call connection_made after create_connection returns
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._slots.release()

    def discard(self, conn: _Connection, release: bool = True) -> None:
        if conn.transport is not None:
            conn.transport.close()
        if release:
            self._slots.release()

    async def aclose(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
