"""The streaming pass-through: every request that is not one of the proxy's own operations.

Nothing is forwarded before :func:`purgeproxy.classify.classify` calls it ordinary: a destructive
request in any spelling the proxy's routes did not take is refused here, never sent upstream.
Otherwise a byte pipe with header rules. Bodies stream in both directions through fixed-size chunks, so
memory does not grow with body size. The only FHIR knowledge here is the optional rewrite of
upstream URLs in searchset/history Bundles, which needs the whole (bounded) body.

The upstream side is :mod:`purgeproxy.upstream_pipe` (pooled HTTP/1.1 connections on asyncio
protocols): it costs a fraction of the CPU per request of aiohttp's ``ClientSession`` (and of
httpx's pool, which fell to 0.02-0.18x direct throughput at 20-64 concurrent requests).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from purgeproxy.access_log import REQUEST_ID, UPSTREAM_STATUS, outcome_response
from purgeproxy.classify import Inspect, Operation, Ordinary, Refused, Verdict, classify, classify_body
from purgeproxy.config import Config
from purgeproxy.fhir.outcome import (
    UPSTREAM_MALFORMED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
)
from purgeproxy.forwarding import (
    Client,
    Network,
    UrlRewriter,
    client_response_headers,
    forwarded_origin,
    is_trusted,
    unsafe_path_reason,
    upstream_request_headers,
)
from purgeproxy.logs import get_logger
from purgeproxy.upstream_pipe import Body, UpstreamError, UpstreamPipe, UpstreamResponse, UpstreamUnreachable
from purgeproxy.upstream_tls import UPSTREAM_TLS, tls_failure

CHUNK = 64 * 1024
_JSON_TYPES = ("application/fhir+json", "application/json")

log = get_logger("purgeproxy.passthrough")


@dataclass(frozen=True)
class Mount:
    """Where the proxy's FHIR base is mounted and what it maps onto upstream."""

    base_path: str
    upstream_base: str
    public_url: str | None
    trusted_proxies: tuple[Network, ...] = ()

    def public_base(self, request: web.Request) -> str:
        """The proxy's FHIR base in URLs it writes (Location, status URLs, Bundle links)."""
        return self._public_base(self.origin(request))

    def _public_base(self, origin: tuple[str, str]) -> str:
        if self.public_url:
            return self.public_url
        scheme, host = origin
        return f"{scheme}://{host}{self.base_path}"

    def origin(self, request: web.Request) -> tuple[str, str]:
        """Scheme and host as clients see them: from ``server.public_url``, else forwarded by a
        trusted proxy, else the address the client connected to. Never the client's own Host
        header: it would decide where the URLs the proxy writes send the next request."""
        if self._public_origin:
            return self._public_origin
        return self.origin_of(request.headers, request.remote, request.scheme, lambda: _listening_address(request))

    def origin_of(self, headers: CIMultiDictProxy[str] | CIMultiDict[str], peer: str | None, scheme: str,
                  local: Callable[[], str]) -> tuple[str, str]:
        """:meth:`origin` from the parts of a request: its headers, the peer's address, the scheme
        it came in on and (asked only when needed) this end's host:port."""
        if self._public_origin:
            return self._public_origin
        forwarded = (forwarded_origin(headers)  # type: ignore[arg-type]
                     if self.trusted_proxies and is_trusted(peer, self.trusted_proxies)
                     else None)
        return forwarded or (scheme, local())

    @cached_property
    def _public_origin(self) -> tuple[str, str] | None:
        """``server.public_url`` parsed once, not per request."""
        if not self.public_url:
            return None
        url = URL(self.public_url)
        return url.scheme, url.raw_authority

    @cached_property
    def _prefix(self) -> str:
        return URL(self.public_url).path.rstrip("/") if self.public_url else self.base_path

    def remainder(self, request: web.Request) -> str | None:
        """The raw path and query after the base, exactly as the client encoded them; None when
        the raw path does not start with the base literally (``/fhi%72/...``): the router matched
        the decoded path, and cutting the base off the encoded one would forward another request."""
        raw = request.raw_path
        rest = raw[len(self.base_path):]
        if not raw.startswith(self.base_path) or rest[:1] not in ("", "/", "?"):
            return None
        return rest

    def rewriter(self, request: web.Request, origin: tuple[str, str] | None = None) -> UrlRewriter:
        return self.rewriter_of(origin or self.origin(request))

    def rewriter_of(self, origin: tuple[str, str]) -> UrlRewriter:
        return UrlRewriter(self.upstream_base, self._public_base(origin))

    def client(self, request: web.Request, rid: str, origin: tuple[str, str] | None = None) -> Client:
        """Who called, and the public base (host, scheme, path) for upstreams that build links
        from the forwarded headers. ``origin`` when the caller already has it (once per request)."""
        return self.client_of(request.remote, origin or self.origin(request), rid)

    def client_of(self, peer: str | None, origin: tuple[str, str], rid: str) -> Client:
        return Client(peer or "unknown", *origin, self._prefix, rid)


# The local address of each client connection, read once per connection: a getsockname() system
# call per request showed in the pass-through profile.
_SOCKNAMES: weakref.WeakKeyDictionary[asyncio.BaseTransport, str] = weakref.WeakKeyDictionary()


def _listening_address(request: web.Request) -> str:
    """host:port of this end of the client's connection."""
    transport = request.transport
    if transport is None:
        return "localhost"
    known = _SOCKNAMES.get(transport)
    if known is None:
        sockname = transport.get_extra_info("sockname")
        if not sockname:
            return "localhost"
        host, port = sockname[0], sockname[1]
        known = _SOCKNAMES[transport] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return known


class Passthrough:
    """Forwards one request to the upstream and streams the answer back."""

    def __init__(self, config: Config, pipe: UpstreamPipe) -> None:
        self.mount = Mount(
            config.server.base_path, config.upstream.url, config.server.public_url,
            tuple(config.server.trusted_proxies),
        )
        self.pipe = pipe
        self.rewrite_types = frozenset(config.passthrough.rewrite_bundle_types)
        self.rewrite_max = config.passthrough.rewrite_max_bytes
        self.inspect_max = config.passthrough.inspect_max_bytes

    def verdict(self, request: web.Request) -> Verdict:
        """The routing rule's verdict on this request, from its raw (still encoded) target."""
        return self._verdict(request, self.mount.remainder(request))

    def _verdict(self, request: web.Request, remainder: str | None) -> Verdict:
        if remainder is None:
            return Refused(400, "invalid", f"the path must begin with {self.mount.base_path} exactly, "
                           "not percent-encoded; nothing was forwarded to the upstream")
        reason = unsafe_path_reason(remainder)
        if reason:
            return Refused(400, "invalid", reason)
        path, _, query = remainder.partition("?")
        return classify(request.method, path, query, request.headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward an ordinary request; answer anything else with an OperationOutcome."""
        remainder = self.mount.remainder(request)
        verdict = self._verdict(request, remainder)
        body: bytes | None = None
        if isinstance(verdict, Inspect):
            body = await self._inspected_body(request)
            verdict = classify_body(body) if body is not None else Refused(
                413, "too-costly", f"a body posted to the base is checked for destructive Bundle "
                f"entries and may be at most {self.inspect_max} bytes (passthrough.inspect_max_bytes)")
        if isinstance(verdict, Ordinary) and remainder is not None:
            return await self._forward(request, remainder, body)
        return refusal_response(verdict)

    async def _inspected_body(self, request: web.Request) -> bytes | None:
        """The whole body, or None past ``inspect_max`` (without reading more than that)."""
        if request.content_length is not None and request.content_length > self.inspect_max:
            return None
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            parts.append(chunk)
            size += len(chunk)
            if size > self.inspect_max:
                return None
        return b"".join(parts)

    async def _forward(self, request: web.Request, remainder: str, body: bytes | None) -> web.StreamResponse:
        """Exactly the request that was classified: the same raw path, query and body."""
        origin = self.mount.origin(request)
        headers = upstream_request_headers(request.headers, self.mount.client(request, request[REQUEST_ID], origin))
        data: Body = body
        if body is None and request.body_exists:
            data = request.content.iter_any()
        try:
            upstream = await self.pipe.request(request.method, remainder, headers, data)
        except (TimeoutError, UpstreamError) as failure:
            return outcome_response(*self.failure(failure))
        request[UPSTREAM_STATUS] = upstream.status
        async with upstream:
            return await self._relay(request, upstream, origin)

    async def _relay(
        self, request: web.Request, upstream: UpstreamResponse, origin: tuple[str, str]
    ) -> web.StreamResponse:
        rewriter = self.mount.rewriter(request, origin)
        headers = client_response_headers(upstream.headers, rewriter)
        headers["X-Request-Id"] = request[REQUEST_ID]
        try:
            first, whole = await self.first_part(request.method, upstream, rewriter)
        except (TimeoutError, UpstreamError):
            return outcome_response(502, "transient", UPSTREAM_MALFORMED)
        if whole:  # headers and body in one write: measurably cheaper than streaming it
            headers.popall("Content-Length", None)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=first)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        await self._pump(request, upstream, response, first)
        return response

    def failure(self, failure: TimeoutError | UpstreamError) -> tuple[int, str, str]:
        """(status, issue code, text) of the answer to a request the upstream gave no usable
        answer to: the same for the front and for aiohttp's handler."""
        if isinstance(failure, TimeoutError):
            return 504, "timeout", UPSTREAM_TIMEOUT
        tls = tls_failure(failure, self.pipe.https, failure.disconnected)
        if tls is not None:
            return 502, "security" if tls == UPSTREAM_TLS else "transient", tls
        return 502, "transient", UPSTREAM_UNREACHABLE if isinstance(failure, UpstreamUnreachable) else UPSTREAM_MALFORMED

    async def first_part(self, method: str, upstream: UpstreamResponse, rewriter: UrlRewriter) -> tuple[bytes, bool]:
        """(the body's first bytes, whether they are all of it). A JSON answer that fits in
        ``rewrite_max`` is read whole, with its Bundle's URLs rewritten when it is one of
        ``rewrite_types``; a larger or compressed one streams on unchanged from what was read.
        Raises the pipe's errors (the status line is not sent yet)."""
        if not self.may_rewrite(method, upstream):
            return b"", False
        first = await upstream.read(self.rewrite_max + 1)
        if len(first) > self.rewrite_max:
            return first, False
        return rewritten_bundle(first, self.rewrite_types, rewriter) or first, True

    def may_rewrite(self, method: str, upstream: UpstreamResponse) -> bool:
        """Only plain JSON answers can be Bundles we rewrite; compressed ones pass untouched."""
        return (
            bool(self.rewrite_types)
            and method in ("GET", "POST")
            and upstream.content_type in _JSON_TYPES
            and upstream.headers.get("Content-Encoding", "identity") == "identity"
            and (upstream.content_length or 0) <= self.rewrite_max
        )

    async def _pump(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        already_read: bytes,
    ) -> None:
        """Copy the rest of the upstream body; a failure mid-body aborts the client connection.

        The status line is already sent, so the only honest signal left is a broken connection:
        finishing the response normally would present a truncated body as complete.
        """
        try:
            if already_read:
                await response.write(already_read)
            while chunk := await upstream.chunk():
                await response.write(chunk)
        except (TimeoutError, UpstreamError):
            log.warning("upstream_body_failed", path=request.rel_url.raw_path, status=upstream.status)
            response.force_close()
            if request.transport is not None:
                request.transport.abort()


def refusal_response(verdict: Verdict) -> web.Response:
    """The OperationOutcome for a request the rule does not let through. An ``Operation`` here
    means the proxy's route did not take it (another method or spelling): refused, not guessed."""
    if not isinstance(verdict, Refused):
        name = verdict.name if isinstance(verdict, Operation) else "this request"
        verdict = Refused(400, "invalid", f"{name} is not accepted in this form; nothing was "
                          "forwarded to the upstream")
    extra = {"expression": [verdict.expression]} if verdict.expression else {}
    return outcome_response(verdict.status, verdict.code, verdict.text, **extra)


def rewritten_bundle(
    body: bytes, types: frozenset[str], rewriter: UrlRewriter
) -> bytes | None:
    """The body with upstream URLs rewritten, or None to relay the original bytes unchanged."""
    if b'"Bundle"' not in body:  # most JSON answers are single resources: skip parsing them
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # deeply nested JSON is not ours to rewrite
        return None
    if not (
        isinstance(document, dict)
        and document.get("resourceType") == "Bundle"
        and document.get("type") in types
        and rewriter.bundle(document)
    ):
        return None
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
