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


def _request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it sent a sane one, otherwise a fresh id."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):024x}"


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the request with an id (bound to every log line of the request), log the outcome and
    meter pass-through requests."""
    request[REQUEST_ID] = rid = _request_id(request)
    bind_request_id(rid)  # aiohttp runs each request in its own task: the binding ends with it
    started = time.perf_counter()
    response = await handler(request)  # failures were answered by purgeproxy.errors, inside
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    latency = time.perf_counter() - started
    if enabled(logging.INFO):
        log.info(
            "request",
            request_id=rid,
            method=request.method,
            path=request.rel_url.raw_path,
            status=response.status,
            upstream_status=request.get(UPSTREAM_STATUS),
            latency_ms=round(latency * 1000, 2),
        )
    if PASSED_THROUGH in request:
        metrics.passthrough_answered(request.method, response.status, latency, request.get(UPSTREAM_STATUS))
    return response
