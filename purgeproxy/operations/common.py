"""What every destructive operation handler does first: the read-only switch, path checks,
authorization, a bounded body. Refusals are raised; ``purgeproxy.errors`` answers them."""

from __future__ import annotations

from aiohttp import web

from purgeproxy.app_keys import AUTHORIZER, CONFIG, PROFILE
from purgeproxy.audit import Attempt
from purgeproxy.errors import ATTEMPT
from purgeproxy.forwarding import unsafe_path_reason
from purgeproxy.operations.params import BadRequest, check_xml, is_xml
from purgeproxy.render import requested_of
from purgeproxy.security.authorizer import Caller
from purgeproxy.security.errors import Denied


async def caller_of(request: web.Request, operation: str, destructive: bool = True,
                    patient: str | None = None) -> Caller:
    """Who may run ``operation`` here, checked before the body is read: refusals cost nothing.
    The answer's format (``_format``, ``Accept``) is checked first of all.

    Watching or cancelling a job (``destructive=False``) stays possible in read-only mode: it
    deletes nothing, and cancelling is exactly what an operator who just flipped the switch wants.
    """
    requested_of(request)  # a format the proxy cannot produce is refused (406) before any work
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


async def body_fhir_version(request: web.Request, body: bytes) -> str | None:
    """The FHIR version an XML body is read in: the upstream's (its element tables differ between
    versions), once the body is known to be safe, well-formed XML; None for JSON, which needs none,
    so a JSON body costs no upstream read."""
    if not is_xml(request.content_type) or not body.strip():
        return None
    check_xml(body)
    return (await request.app[PROFILE].get()).definitions.fhir_version
