"""What every destructive operation handler does first: the read-only switch, path checks,
authorization, a bounded body. Refusals are raised; ``purgeproxy.errors`` answers them."""

from __future__ import annotations

from aiohttp import web

from purgeproxy.app_keys import AUTHORIZER, CONFIG
from purgeproxy.audit import Attempt
from purgeproxy.errors import ATTEMPT
from purgeproxy.forwarding import unsafe_path_reason
from purgeproxy.operations.params import BadRequest
from purgeproxy.security.authorizer import Caller
from purgeproxy.security.errors import Denied


async def caller_of(request: web.Request, operation: str, destructive: bool = True,
                    patient: str | None = None) -> Caller:
    """Who may run ``operation`` here, checked before the body is read: refusals cost nothing.

    Watching or cancelling a job (``destructive=False``) stays possible in read-only mode: it
    deletes nothing, and cancelling is exactly what an operator who just flipped the switch wants.
    """
    if destructive:  # from here on, a refusal of this request is audited (purgeproxy.errors)
        request[ATTEMPT] = attempt = Attempt(operation, patient)
    if destructive and request.app[CONFIG].safety.read_only:
        raise Denied(403, "purgeproxy is read-only (safety.read_only): destructive operations are refused")
    reason = unsafe_path_reason(request.raw_path)
    if reason:
        raise BadRequest(400, "invalid", reason)
    caller = await request.app[AUTHORIZER].authorize(request.headers.get("Authorization"), operation, patient)
    if destructive:
        attempt.caller = caller.name
    return caller


async def bounded_body(request: web.Request) -> bytes:
    """The request body, refused with 413 past ``purge.max_body_bytes`` without reading it all."""
    limit = request.app[CONFIG].purge.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, "too-costly", f"the request body exceeds {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise BadRequest(413, "too-costly", f"the request body exceeds {limit} bytes")
    return body
