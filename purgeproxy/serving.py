"""The HTTP server: aiohttp's, with the answers and logs it makes on its own made safe.

A request aiohttp's parser refuses (a request line or header over its limit, a malformed header)
never reaches the app or its middleware: aiohttp answers it itself, in plain text that quotes the
offending bytes (a query value, ``Bearer <token>``), and logs a traceback that quotes them again.
The connection handler here answers every such error with an OperationOutcome that echoes
nothing of the request, and logs one structured line naming only the error's type.

aiohttp builds its connection handler inside ``web.Server.__call__``; :class:`ProxyRunner` (the
app runner ``purgeproxy serve`` and the in-process tests use) gives its server the handler below.
Each connection starts at the pass-through's front (:mod:`purgeproxy.front`), which answers plainly
ordinary GET/HEAD requests itself and hands everything else to that handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from purgeproxy.access_log import outcome_response
from purgeproxy.front import Front, FrontProtocol
from purgeproxy.logs import get_logger

log = get_logger("purgeproxy.http")


def _answer(status: int, error: BaseException | None) -> tuple[str, str]:
    """The issue code and text for an error aiohttp answers itself; never its message."""
    if isinstance(error, LineTooLong):
        return "too-long", "the request line or a header is longer than this server accepts"
    if isinstance(error, HttpProcessingError):
        return "structure", f"the request is not valid HTTP ({type(error).__name__})"
    if status == 504:
        return "timeout", "the request took too long"
    return "exception", "internal error in purgeproxy"


def _error_name(kw: dict[str, Any]) -> str | None:
    error = kw.get("exc_info")
    return type(error).__name__ if isinstance(error, BaseException) else None


class ProxyRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with its error answer and its logging replaced."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Like aiohttp's: answer ``status`` and close; but as an OperationOutcome without
        ``message`` (it quotes the request) and logged without a traceback."""
        (log.error if status >= 500 else log.warning)(
            "http_error", status=status, error=type(exc).__name__ if exc else None, remote=request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already under way: no other can be sent")
        response = outcome_response(status, *_answer(status, exc))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own messages are constant texts; the exception's is not, so only its type."""
        log.error("http_server_error", detail=str(args[0]) if args else None, error=_error_name(kw))

    def log_debug(self, *args: Any, **kw: Any) -> None:
        if self.debug:
            log.debug("http_server_debug", detail=str(args[0]) if args else None, error=_error_name(kw))


class ProxyServer(web.Server):
    """``web.Server`` whose connections start at the pass-through's front
    (:mod:`purgeproxy.front`), which hands every request it does not take, and the rest of its
    connection, to a :class:`ProxyRequestHandler`."""

    front: Front | None
    fronts: set[FrontProtocol]

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self.front is not None:
            return FrontProtocol(self, self.front)
        return self.aiohttp_handler()

    def aiohttp_handler(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = ProxyRequestHandler  # same slots: only the methods above change
        return handler

    def front_opened(self, protocol: FrontProtocol) -> None:
        self.fronts.add(protocol)

    def front_closed(self, protocol: FrontProtocol) -> None:
        self.fronts.discard(protocol)

    def pre_shutdown(self) -> None:
        for protocol in list(self.fronts):
            protocol.close()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        """As aiohttp's: answers under way get ``timeout`` seconds, then connections close."""
        deadline = asyncio.get_running_loop().time() + (timeout if timeout is not None else 60.0)
        while any(protocol.busy for protocol in self.fronts) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(self.fronts):
            if protocol.transport is not None:
                protocol.transport.abort()
        self.fronts.clear()
        await super().shutdown(timeout)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` serving through :class:`ProxyServer`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProxyServer
        assert isinstance(server, ProxyServer)
        server.front = Front(self.app)
        server.fronts = set()
        return server


async def serve_forever(app: web.Application, host: str, port: int, reuse_port: bool) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (aiohttp's ``GracefulExit``), then clean up."""
    runner = ProxyRunner(app, access_log=None, handle_signals=True)
    try:  # a start-up failure (e.g. the job store cannot be opened) still closes what was opened
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
