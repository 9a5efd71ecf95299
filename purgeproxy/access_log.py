"""Request ids and the access log: one structured line per request, whatever answered it.

A middleware rather than code in each handler, so that pass-through, metadata, health checks and
operations are logged alike. Only the path is logged, never the query string: its values are
patient data.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from purgeproxy import metrics
from purgeproxy.fhir.outcome import FHIR_JSON, error
from purgeproxy.logs import bind_request_id, enabled, get_logger

REQUEST_ID = web.RequestKey("request_id", str)
UPSTREAM_STATUS = web.RequestKey("upstream_status", int)
PASSED_THROUGH = web.RequestKey("passed_through", bool)  # set by the pass-through route: metered

log = get_logger("purgeproxy.access")


class OutcomeResponse(web.Response):
    """An OperationOutcome answer made by the proxy itself, in JSON; it keeps its ``document`` so
    that the error middleware (``purgeproxy.errors``) renders it in the format the request asks
    for, as every answer the proxy makes is (``purgeproxy.render``)."""

    def __init__(self, status: int, document: dict[str, object]) -> None:
        super().__init__(status=status, text=json.dumps(document), content_type=FHIR_JSON)
        self.document = document


def outcome_response(status: int, code: str, text: str, **extra: object) -> web.Response:
    """An OperationOutcome answer made by the proxy itself."""
    return OutcomeResponse(status, error(code, text, **extra))


_ID_PREFIX = os.urandom(4).hex()  # unique per process; a counter is cheaper than uuid4 per request
_ID_COUNTER = itertools.count()


def request_id(given: str) -> str:
    """The caller's ``X-Request-Id`` when it sent a sane one, otherwise a fresh id."""
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):024x}"


def answered(rid: str, method: str, raw_path: str, status: int, upstream_status: int | None,
             latency: float, passed_through: bool) -> None:
    """The access-log line (path only, never the query) and the pass-through's metrics, for a
    request answered here or by the pass-through's front (``purgeproxy.front``)."""
    if enabled(logging.INFO):
        log.info(
            "request",
            request_id=rid,
            method=method,
            path=raw_path,
            status=status,
            upstream_status=upstream_status,
            latency_ms=round(latency * 1000, 2),
        )
    if passed_through:
        metrics.passthrough_answered(method, status, latency, upstream_status)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the request with an id (bound to every log line of the request), log the outcome and
    meter pass-through requests."""
    request[REQUEST_ID] = rid = request_id(request.headers.get("X-Request-Id", ""))
    bind_request_id(rid)  # aiohttp runs each request in its own task: the binding ends with it
    started = time.perf_counter()
    response = await handler(request)  # failures were answered by purgeproxy.errors, inside
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    answered(rid, request.method, request.rel_url.raw_path, response.status, request.get(UPSTREAM_STATUS),
             time.perf_counter() - started, PASSED_THROUGH in request)
    return response
