"""What every destructive operation handler does first: authorize, read a bounded body."""

from __future__ import annotations

from aiohttp import web

from purgeproxy.access_log import outcome_response
from purgeproxy.app_keys import CONFIG
from purgeproxy.auth import Caller, Denied, authorize
from purgeproxy.operations.params import BadRequest


def refuse(problem: BadRequest | Denied) -> web.Response:
    """The OperationOutcome answer for a refused request."""
    if isinstance(problem, Denied):
        response = outcome_response(problem.status, "login" if problem.status == 401 else "forbidden", problem.text)
        if problem.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="purgeproxy"'
        return response
    extra = {"expression": [problem.expression]} if problem.expression else {}
    return outcome_response(problem.status, problem.code, problem.text, **extra)


def caller_of(request: web.Request) -> Caller:
    return authorize(request.headers.get("Authorization"), request.app[CONFIG].auth.admin_token)


async def bounded_body(request: web.Request) -> bytes:
    """The request body, refused with 413 past ``purge.max_body_bytes`` without reading it all."""
    limit = request.app[CONFIG].purge.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, "too-costly", f"the request body exceeds {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise BadRequest(413, "too-costly", f"the request body exceeds {limit} bytes")
    return body
