"""The pass-through's byte pipe to the upstream: pooled HTTP/1.1 connections on asyncio protocols.

Why not aiohttp's ``ClientSession`` (which the pass-through used before): measured in front of
the 10 ms fake upstream at 64 concurrent requests, a bare aiohttp server relaying through
``ClientSession`` spent ~390 µs of CPU per request, the same server relaying through one asyncio
protocol per upstream connection with httptools' parser (llhttp, Node's parser in C) ~160 µs;
the client is most of a pass-through's per-request work. This module knows HTTP/1.1 framing
only: which headers to send is decided by :mod:`purgeproxy.forwarding`, what may be forwarded by
:mod:`purgeproxy.classify`, and this pipe sends exactly the request it is given.

Streaming both ways with flow control: a request body is written chunk by chunk as the client
sends it, waiting while the upstream's socket buffer is full; a response body is read chunk by
chunk, and the upstream socket stops being read while more than ``_HIGH_WATER`` bytes wait.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterable

import httptools
from multidict import CIMultiDict
from yarl import URL

_HIGH_WATER = 256 * 1024  # response bytes buffered before the upstream socket is paused
_LOW_WATER = 64 * 1024
_RETRIED = frozenset({"GET", "HEAD", "OPTIONS"})  # safe to send again on a fresh connection


class UpstreamError(Exception):
    """No usable answer from the upstream. ``disconnected``: the connection closed before any
    byte of an answer (for an https upstream, possibly a refused client certificate)."""

    def __init__(self, message: str, disconnected: bool = False) -> None:
        super().__init__(message)
        self.disconnected = disconnected


class UpstreamUnreachable(UpstreamError):
    """The connection could not be opened."""


class _Connection(asyncio.Protocol):
    """One upstream connection; parses the answers to the requests written on it, one at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # any byte of this answer
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.head_done and self._until_close():
            self.complete = True  # an answer framed by the end of the connection: it is whole
        elif not self.complete:
            self._error = UpstreamError("the upstream closed the connection", disconnected=not self.received)
            if exc is not None:
                self._error.__cause__ = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(self._error or ConnectionResetError("the upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True  # 101: nothing after the head is HTTP; the connection is not reused
            self._close()
        except httptools.HttpParserError as error:
            self._error = UpstreamError(f"malformed answer from the upstream ({type(error).__name__})")
            self._close()
        self._wake()

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim answer (100 Continue): the real one follows
            self.reason = ""
            return
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # only known until this returns

    # used by the pipe
    def _until_close(self) -> bool:
        """Whether the answer's body ends with the connection (neither length nor chunks)."""
        names = {name.lower() for name, _ in self.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def wait(self, timeout: float) -> None:
        """Until more of the answer arrived (or it failed); TimeoutError after ``timeout`` silent s."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def sent(self, sender: asyncio.Task[None]) -> None:
        """The request body's writer ended: a failure is looked at (and so never logged as
        unretrieved) and wakes whoever waits for the answer."""
        if not sender.cancelled() and sender.exception() is not None:
            self._wake()

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self._begin()
        self._error = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamResponse:
    """An answer whose head has arrived; the body is read with :meth:`chunk` or :meth:`read`.
    Must be released (``async with`` or :meth:`release`): the connection goes back to the pool
    only when the whole body was read, otherwise it is closed."""

    __slots__ = ("status", "reason", "headers", "_conn", "_pipe", "_bodiless", "_sender")

    def __init__(self, pipe: UpstreamPipe, conn: _Connection, bodiless: bool,
                 sender: asyncio.Task[None] | None) -> None:
        self.status = conn.status
        self.reason = conn.reason
        self.headers: CIMultiDict[str] = CIMultiDict(conn.headers)
        self._conn: _Connection | None = conn
        self._pipe = pipe
        # an answer to HEAD has no body whatever its Content-Length says; httptools cannot be
        # told so, so such a connection is closed afterwards rather than parsed on
        self._bodiless = bodiless
        self._sender = sender

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def chunk(self) -> bytes:
        """The next piece of the body, ``b""`` at its end; UpstreamError if it was cut short."""
        conn = self._conn
        if conn is None or self._bodiless:
            return b""
        while not conn.chunks:
            if conn.complete:
                return b""
            await conn.wait(self._pipe.read_timeout)
        return conn.take_chunk()

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first ``limit`` bytes or more when it is longer."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.chunk():
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        return b"".join(parts)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        sender = self._sender
        whole = conn.complete and not conn.chunks and (sender is None or sender.done())
        if sender is not None and not sender.done():
            sender.cancel()
        self._pipe._put_back(conn, whole and not self._bodiless and conn.keep_alive)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()


Body = bytes | AsyncIterable[bytes] | None


class UpstreamPipe:
    """Keep-alive connections to one upstream origin, at most ``limit`` at a time."""

    def __init__(self, base_url: str, limit: int, keepalive: float, connect_timeout: float,
                 read_timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        url = URL(base_url)
        self.https = url.scheme == "https"
        self.host = url.raw_host or "localhost"
        self.port = url.port or (443 if self.https else 80)
        self.base_path = url.raw_path.rstrip("/")
        # host[:port] only: never the URL's userinfo, which would travel in every request's head
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = bracketed if url.is_default_port() else f"{bracketed}:{self.port}"
        self.limit = limit
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl = ssl_context if self.https else None
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    async def request(self, method: str, target: str, headers: CIMultiDict[str], body: Body) -> UpstreamResponse:
        """Send ``method`` ``target`` (the raw path and query after the upstream's base) and wait
        for the head of the answer. ``headers`` are sent as given plus ``Host`` and the body's
        framing; a streamed body without ``Content-Length`` is sent chunked."""
        path = self.base_path + target
        head, chunked = self._head(method, path if path.startswith("/") else "/" + path, headers, body)
        conn = await self._connection()
        try:
            return await self._exchange(conn, method, head, body, chunked)
        except UpstreamError as error:
            if not (conn.reused and error.disconnected and method in _RETRIED and not body):
                raise
        # a kept-alive connection the upstream had closed meanwhile: once more on a fresh one
        return await self._exchange(await self._connection(fresh=True), method, head, body, chunked)

    def _head(self, method: str, path: str, headers: CIMultiDict[str], body: Body) -> tuple[bytes, bool]:
        """The request head, and whether the body goes chunked."""
        chunked = False
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is not None and "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
            chunked = True
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        count = len(headers)
        if lines.count("\n") != count or lines.count("\r") != count or "\r" in path or "\n" in path:
            raise UpstreamError("a header or the path holds a line break")  # never another request
        start = f"{method} {path} HTTP/1.1\r\nHost: {self._host_header}\r\n{lines}\r\n"
        return start.encode("utf-8", "surrogateescape"), chunked

    async def _exchange(self, conn: _Connection, method: str, head: bytes, body: Body,
                        chunked: bool) -> UpstreamResponse:
        transport = conn.transport
        assert transport is not None
        sender: asyncio.Task[None] | None = None
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)  # one segment for a small request
            else:
                transport.write(head)
                sender = asyncio.ensure_future(_send_body(conn, body, chunked))
                sender.add_done_callback(conn.sent)
            while not conn.head_done:
                if sender is not None and sender.done() and sender.exception() is not None:
                    raise UpstreamError("the request body could not be sent") from sender.exception()
                await conn.wait(self.read_timeout)
        except BaseException:
            if sender is not None:
                sender.cancel()
            self._put_back(conn, False)
            raise
        return UpstreamResponse(self, conn, method == "HEAD" or conn.status == 101, sender)

    async def _connection(self, fresh: bool = False) -> _Connection:
        """An idle connection that is still open and not past keep-alive, or a new one."""
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                conn.reused = True
                return conn
            self._discard(conn)
        while self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle and not fresh:
                return await self._connection()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
        except TimeoutError:
            raise
        except ssl.SSLError as error:
            raise UpstreamError("TLS handshake with the upstream failed") from error
        except OSError as error:
            raise UpstreamUnreachable(f"cannot connect to the upstream ({type(error).__name__})",
                                      disconnected=isinstance(error, ConnectionResetError)) from error
        return conn

    def _put_back(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.closed and not self._closed:
            conn.reset()
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            if self._sweep is None:
                self._sweep = conn.loop.call_later(self.keepalive, self._close_expired)
        else:
            if conn.complete:
                conn._close()
            else:
                conn.abort()  # mid-answer: nothing more of it is wanted
            self._open -= 1
        self._wake_one()

    def _close_expired(self) -> None:
        """Idle connections past keep-alive are closed, not kept open until the next request."""
        self._sweep = None
        now = time.monotonic()
        expired = [conn for conn in self._idle if now - conn.idle_since >= self.keepalive]
        for conn in expired:
            self._idle.remove(conn)
            self._discard(conn)
        if self._idle and not self._closed:
            oldest = min(conn.idle_since for conn in self._idle)
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(max(0.0, oldest + self.keepalive - now), self._close_expired)

    def _discard(self, conn: _Connection) -> None:
        conn._close()
        self._open -= 1

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        while self._idle:
            self._discard(self._idle.pop())


async def _send_body(conn: _Connection, body: AsyncIterable[bytes], chunked: bool) -> None:
    """Write a streamed request body as it arrives, waiting whenever the upstream lags."""
    transport = conn.transport
    assert transport is not None
    async for piece in body:
        if not piece:
            continue
        if conn.closed:
            raise ConnectionResetError("the upstream closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
        await conn.drain()
    if chunked:
        transport.write(b"0\r\n\r\n")
