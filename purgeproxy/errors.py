"""The one place where failures become answers: an aiohttp middleware.

Handlers, the engine and the auth layer raise :class:`~purgeproxy.fhir.outcome.OutcomeError`
(refusals, upstream failures, the confirmation rail) and never build error responses
themselves; this middleware answers each with its OperationOutcome, status and headers, and
audits the refusal of a destructive request (so every refusal is audited, in one place). Anything
else that escapes a handler is a bug: answered 500 without echoing the request, and logged by
exception type only, because its message may quote patient data.
"""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.typedefs import Handler

from purgeproxy import audit
from purgeproxy.access_log import REQUEST_ID, outcome_response
from purgeproxy.fhir.outcome import FHIR_JSON, OutcomeError
from purgeproxy.logs import get_logger

log = get_logger("purgeproxy.errors")

# the destructive request this is, once its handler named it (operations.common.caller_of)
ATTEMPT = web.RequestKey("destructive_attempt", audit.Attempt)
AUDITED_REFUSALS = frozenset({401, 403, 422, 429})  # refused destructive requests get an audit line


def error_response(failure: OutcomeError) -> web.Response:
    """The HTTP answer for a failure: its status, its headers, its OperationOutcome."""
    return web.Response(status=failure.status, text=json.dumps(failure.document()),
                        content_type=FHIR_JSON, headers=failure.headers)


@web.middleware
async def outcome_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OutcomeError as failure:
        attempt = request.get(ATTEMPT)
        if attempt is not None and failure.status in AUDITED_REFUSALS:
            audit.refused(attempt, failure.status, failure.code)
        return error_response(failure)
    except web.HTTPException as http_error:  # the router's own 404 / 405
        return outcome_response(http_error.status, "not-found" if http_error.status == 404 else "processing",
                                http_error.reason)
    except Exception as crash:
        log.error("handler_failed", request_id=request.get(REQUEST_ID), path=request.rel_url.raw_path,
                  error=type(crash).__name__)
        return outcome_response(500, "exception", "internal error in purgeproxy")
