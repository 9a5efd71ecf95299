"""The pass-through's front: ordinary GET and HEAD requests answered without aiohttp's server.

Measured in front of the 10 ms fake upstream (``python -m bench --only passthrough``), a
pass-through request through aiohttp's server cost ~440 µs of CPU, most of it in the server's
per-request machinery (request object, middleware chain, router, ``StreamResponse``) rather than
in the forwarding itself; one process could not keep up with 20 concurrent clients. This asyncio
protocol is what each client connection starts with. It takes a request only when it is plainly
ordinary: a complete, bodiless HTTP/1.1 ``GET`` or ``HEAD`` under the FHIR base, short, without
percent-escapes in its path, asking for no particular answer format, that no route of the app but
the pass-through can match (:class:`purgeproxy.ordinary_route.OrdinaryRequests`' own rule) and
that :func:`purgeproxy.classify.classify` calls ordinary. Anything else, and everything after it
on the same connection, is handed to aiohttp's connection handler with the bytes it has not
consumed, unchanged: refusals, destructive operations, bodies, parser errors and odd spellings
all take the one path they always took, and this module never answers them.

What it does to a request it takes is the pass-through's: the same header rules
(:mod:`purgeproxy.forwarding`), the same upstream pipe, Bundle URL rewriting, streaming with flow
control in both directions, the access-log line and the metrics (:func:`purgeproxy.access_log.answered`).
"""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from purgeproxy.access_log import answered, request_id
from purgeproxy.app_keys import PASSTHROUGH
from purgeproxy.classify import Ordinary, classify
from purgeproxy.fhir.formats import FormatRefused, requested, serialize
from purgeproxy.fhir.outcome import FHIR_JSON, UPSTREAM_MALFORMED, error
from purgeproxy.fhir.xml import XmlError, tables_for
from purgeproxy.forwarding import client_response_headers, unsafe_path_reason, upstream_request_headers
from purgeproxy.logs import bind_request_id, get_logger
from purgeproxy.ordinary_route import OrdinaryRequests
from purgeproxy.passthrough import Passthrough
from purgeproxy.render import app_fhir_version
from purgeproxy.upstream_pipe import UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from purgeproxy.serving import ProxyServer

log = get_logger("purgeproxy.front")

_MAX_HEAD = 8190  # aiohttp's line limit: a longer head is aiohttp's to judge (and refuse)
_TAKEN = frozenset({"GET", "HEAD"})
_FORMAT_PARAMETERS = ("_format", "_pretty", "_summary")  # a requested format: the renderer's business
_BODILESS_STATUS = frozenset({204, 304})
_NO_QUERY: MultiDict[str] = MultiDict()
_BUFFERED = 64 * 1024  # bytes of later requests read ahead while one is answered
_KEEPALIVE = 3630.0  # s an idle connection stays open: aiohttp's handler's default, as before the front


class Request:
    """One request head as the front parsed it (the connection's parser callbacks fill it)."""

    __slots__ = ("url", "headers", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False


class Front:
    """What the front needs of the app, found once it has started (the pipe opens at start-up)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._passthrough: Passthrough | None = None
        self._ordinary: OrdinaryRequests | None = None

    def ready(self) -> bool:
        if self._passthrough is None:
            passthrough = self.app.get(PASSTHROUGH)
            ordinary = next((r for r in self.app.router.resources() if isinstance(r, OrdinaryRequests)), None)
            if passthrough is None or ordinary is None:
                return False
            self._passthrough, self._ordinary = passthrough, ordinary
        return True

    @property
    def passthrough(self) -> Passthrough:
        assert self._passthrough is not None
        return self._passthrough

    def takes(self, method: str, target: str, headers: CIMultiDict[str]) -> str | None:
        """The remainder after the base (raw path and query) when the front answers this
        request, None when aiohttp's handler does."""
        if method not in _TAKEN or not self.ready():
            return None
        mount = self.passthrough.mount
        base = mount.base_path
        if not target.startswith(base + "/"):
            return None
        remainder = target[len(base):]
        path, _, query = remainder.partition("?")
        if "%" in path or unsafe_path_reason(remainder) is not None:
            return None
        if query and any(name in query for name in _FORMAT_PARAMETERS):
            return None
        if "xml" in headers.get("Accept", ""):
            return None
        assert self._ordinary is not None
        if self._ordinary.another_route_may_take(method, base + path):
            return None
        if not isinstance(classify(method, path, query, headers), Ordinary):
            return None
        return remainder


class FrontProtocol(asyncio.Protocol):
    """One client connection, until a request the front does not take hands it to aiohttp."""

    def __init__(self, server: ProxyServer, front: Front) -> None:
        self.server = server
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.parser: httptools.HttpRequestParser | None = None
        self.request = Request()  # the head being parsed (the parser calls back through self)
        self.busy = False
        self.closed = False
        self.handed_off = False
        self.eof = False
        self.paused = False
        self.scheme = "http"
        self.head_sent = False
        self.last_active = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._peer: str | None = None
        self._local: str | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        self.server.front_opened(self)
        self.last_active = self.loop.time()
        self.loop.call_later(_KEEPALIVE, self._close_if_idle)

    def _close_if_idle(self) -> None:
        """An idle connection (or one that never finished a head) closes after ``_KEEPALIVE``
        seconds without a request, as aiohttp's handler closes its own; one timer per
        connection, re-armed rather than moved at every request."""
        if self.closed or self.handed_off or self.transport is None:
            return
        left = self.last_active + _KEEPALIVE - self.loop.time()
        if self.busy or left > 0:
            self.loop.call_later(max(left, 1.0), self._close_if_idle)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.front_closed(self)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()
        elif len(self.buffer) > _BUFFERED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # resumed when the answer under way is written

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.busy:
            return True  # closed once the answer under way is written
        if self.buffer:
            self._hand_off()  # a partial head and nothing more: aiohttp's to answer
        return None

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks, passed on to the request being parsed
    def on_url(self, url: bytes) -> None:
        self.request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.request.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_message_complete(self) -> None:
        self.request.complete = True

    # requests
    def _next(self) -> None:
        """Take the next request in the buffer, or hand the connection over."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._hand_off()
            return
        if end + 4 > _MAX_HEAD:
            self._hand_off()
            return
        head = bytes(self.buffer[:end + 4])
        request = self.request = Request()
        parser = self.parser
        if parser is None:  # one per connection: llhttp reads one message after another
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            self._hand_off()
            return
        method = parser.get_method().decode("ascii", "replace")
        if not (request.complete and parser.get_http_version() == "1.1" and parser.should_keep_alive()):
            self._hand_off()
            return
        headers = CIMultiDict(request.headers)
        target = request.url.decode("latin-1")
        remainder = self.front.takes(method, target, headers)
        if remainder is None:
            self._hand_off()
            return
        del self.buffer[:end + 4]
        self.busy = True
        self.loop.create_task(self._serve(method, target, remainder, headers))

    def _hand_off(self) -> None:
        """aiohttp's connection handler takes over this connection with the unconsumed bytes."""
        if self.handed_off or self.transport is None:
            return
        self.handed_off = True
        self.server.front_closed(self)
        handler = self.server.aiohttp_handler()
        transport = self.transport
        handler.connection_made(transport)
        transport.set_protocol(handler)
        if self.buffer:
            handler.data_received(bytes(self.buffer))
            self.buffer.clear()

    async def _serve(self, method: str, target: str, remainder: str, headers: CIMultiDict[str]) -> None:
        started = time.perf_counter()
        rid = request_id(headers.get("X-Request-Id", ""))
        bind_request_id(rid)
        status, upstream_status = 500, None
        self.head_sent = False
        try:
            status, upstream_status = await self._forward(method, remainder, headers, rid)
        except Exception as crash:  # a bug: answered like the error middleware answers one
            log.error("handler_failed", request_id=rid, path=target.partition("?")[0], error=type(crash).__name__)
            if self.head_sent and self.transport is not None:
                self.transport.abort()  # mid-answer: a broken connection, never a second head
            else:
                self._fail(rid, 500, "exception", "internal error in purgeproxy", headers)
        finally:
            answered(rid, method, target.partition("?")[0], status, upstream_status,
                     time.perf_counter() - started, True)
            self.busy = False
            self.last_active = self.loop.time()
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        if self.eof and not self.buffer:
            transport.close()
        elif self.buffer:
            if self.paused:
                self.paused = False
                transport.resume_reading()
            self._next()

    async def _forward(self, method: str, remainder: str, headers: CIMultiDict[str],
                       rid: str) -> tuple[int, int | None]:
        """Forward, relay; (status answered, upstream's status or None)."""
        passthrough = self.front.passthrough
        mount = passthrough.mount
        peer = self._peer_address()
        origin = mount.origin_of(headers, peer, self.scheme, self._listening)
        upstream_headers = upstream_request_headers(CIMultiDictProxy(headers), mount.client_of(peer, origin, rid))
        try:
            upstream = await passthrough.pipe.request(method, remainder, upstream_headers, None)
        except (TimeoutError, UpstreamError) as failure:
            return self._fail(rid, *passthrough.failure(failure), headers), None
        async with upstream:
            return await self._relay(method, upstream, origin, rid, headers), upstream.status

    async def _relay(self, method: str, upstream: UpstreamResponse, origin: tuple[str, str], rid: str,
                     request_headers: CIMultiDict[str]) -> int:
        passthrough = self.front.passthrough
        rewriter = passthrough.mount.rewriter_of(origin)
        headers = client_response_headers(upstream.headers, rewriter)
        headers["X-Request-Id"] = rid
        bodiless = method == "HEAD" or upstream.status in _BODILESS_STATUS or upstream.status < 200
        first, whole = b"", False
        if not bodiless:
            try:
                first, whole = await passthrough.first_part(method, upstream, rewriter)
            except (TimeoutError, UpstreamError):
                return self._fail(rid, 502, "transient", UPSTREAM_MALFORMED, request_headers)
        if whole:
            headers["Content-Length"] = str(len(first))
            self._write_head(upstream.status, upstream.reason, headers, first)
            return upstream.status
        chunked = not bodiless and "Content-Length" not in headers
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        self._write_head(upstream.status, upstream.reason, headers, b"")
        if not bodiless:
            await self._pump(upstream, first, chunked)
        return upstream.status

    async def _pump(self, upstream: UpstreamResponse, first: bytes, chunked: bool) -> None:
        """The rest of the body; a failure mid-body breaks the client connection, the only
        honest signal left once the status line is sent."""
        transport = self.transport
        assert transport is not None
        chunk = first
        try:
            while True:
                if chunk:
                    if self.closed:
                        return
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self._drain is not None:
                        await self._drain
                chunk = await upstream.chunk()
                if not chunk:
                    break
        except ConnectionResetError:
            return
        except (TimeoutError, UpstreamError):
            log.warning("upstream_body_failed", status=upstream.status)
            transport.abort()
            return
        if chunked:
            transport.write(b"0\r\n\r\n")

    def _write_head(self, status: int, reason: str, headers: CIMultiDict[str], body: bytes) -> None:
        if "Date" not in headers:
            headers["Date"] = _date()
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        head = f"HTTP/1.1 {status} {reason or 'Unknown'}\r\n{lines}\r\n".encode("utf-8", "surrogateescape")
        assert self.transport is not None
        self.head_sent = True
        if not self.closed:
            self.transport.write(head + body if body else head)

    def _fail(self, rid: str, status: int, code: str, text: str, request_headers: CIMultiDict[str]) -> int:
        """The proxy's own OperationOutcome, as the error middleware renders it
        (``purgeproxy.render``); the front takes no request that names a format in its query."""
        document = error(code, text)
        try:
            wanted = requested(_NO_QUERY, request_headers.get("Accept"))
            tables = tables_for(app_fhir_version(self.front.app))
            body, content_type = serialize(document, wanted, tables), wanted.content_type
        except (FormatRefused, XmlError):  # as render_failure: JSON when the format cannot be made
            body, content_type = json.dumps(document).encode(), FHIR_JSON
        headers = CIMultiDict([("Content-Type", f"{content_type}; charset=utf-8"),
                               ("Content-Length", str(len(body))), ("Vary", "Accept"), ("X-Request-Id", rid)])
        self._write_head(status, HTTPStatus(status).phrase, headers, body)
        return status

    def _peer_address(self) -> str | None:
        if self._peer is None and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            self._peer = peer[0] if isinstance(peer, (list, tuple)) and peer else ""
        return self._peer or None

    def _listening(self) -> str:
        if self._local is None:
            sockname = self.transport.get_extra_info("sockname") if self.transport is not None else None
            if not sockname:
                return "localhost"
            host, port = sockname[0], sockname[1]
            self._local = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self._local

    def close(self) -> None:
        """Server shutdown: an idle connection closes now, a busy one after its answer."""
        if self.transport is not None and not self.busy:
            self.transport.close()


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
