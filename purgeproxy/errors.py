"""The one place where failures become answers: an aiohttp middleware.

Handlers, the engine and the auth layer raise :class:`~purgeproxy.fhir.outcome.OutcomeError`
(refusals, upstream failures, the confirmation rail) and never build error responses
themselves; this middleware answers each with its OperationOutcome, status and headers, in the
format the request asks for (``purgeproxy.render.render_failure``: JSON when that format cannot be
produced), and audits the refusal of a destructive request (so every refusal is audited, in
one place). Outcomes made further in (``access_log.outcome_response``: the pass-through's refusals
and upstream failures) are rendered the same way. Anything else that escapes a handler is a bug:
answered 500 without echoing the request, and logged by exception type only, because its message
may quote patient data.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from purgeproxy import audit
from purgeproxy.access_log import REQUEST_ID, OutcomeResponse
from purgeproxy.fhir.outcome import OutcomeError, error
from purgeproxy.logs import get_logger
from purgeproxy.render import render_failure

log = get_logger("purgeproxy.errors")

# the destructive request this is, once its handler named it (operations.common.caller_of)
ATTEMPT = web.RequestKey("destructive_attempt", audit.Attempt)
AUDITED_REFUSALS = frozenset({401, 403, 422, 429})  # refused destructive requests get an audit line


def error_response(request: web.Request, failure: OutcomeError) -> web.Response:
    """The HTTP answer for a failure: its status, its headers, its OperationOutcome."""
    return render_failure(request, failure.document(), failure.status, failure.headers)


@web.middleware
async def outcome_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except OutcomeError as failure:
        attempt = request.get(ATTEMPT)
        if attempt is not None and failure.status in AUDITED_REFUSALS:
            audit.refused(attempt, failure.status, failure.code)
        return error_response(request, failure)
    except web.HTTPException as http_error:  # the router's own 404 / 405
        code = "not-found" if http_error.status == 404 else "processing"
        return render_failure(request, error(code, http_error.reason), http_error.status)
    except Exception as crash:
        log.error("handler_failed", request_id=request.get(REQUEST_ID), path=request.rel_url.raw_path,
                  error=type(crash).__name__)
        return render_failure(request, error("exception", "internal error in purgeproxy"), 500)
    if isinstance(response, OutcomeResponse):
        return render_failure(request, response.document, response.status)
    return response
