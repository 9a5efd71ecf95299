"""The proxy's own FHIR client: the calls purgeproxy makes itself (metadata, searches, deletes).

Built on httpx so that tests can plug ``respx`` or an ``httpx.MockTransport`` into one seam, the
transport. Every transport failure becomes an ``UpstreamError`` carrying the HTTP status the proxy
should answer with (502 or 504), so callers never see httpx's exception zoo.

Every call the proxy makes itself asks for a fresh answer (``Cache-Control: no-cache``): HAPI
serves a repeated search from its cache for about a minute (``reuseCachedSearchResultsForMillis``)
unless told not to, also for the searches inside a batch Bundle (measured on HAPI 8.4: the batch
request's header reaches its entries). A purge that plans, deletes and verifies from a cached
answer deletes what no longer matches and misses what was written since. One place, so that no
search or verification read can forget it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from purgeproxy.fhir.outcome import (
    FHIR_JSON,
    UPSTREAM_MALFORMED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    OutcomeError,
)
from purgeproxy.logs import current_request_id
from purgeproxy.upstream_tls import UPSTREAM_TLS, tls_failure

GONE = (404, 410)  # the answers to a read of a resource that was deleted or never existed
FRESH = {"Cache-Control": "no-cache"}  # bypass upstream (and intermediary) caches


class UpstreamError(OutcomeError):
    """The upstream could not be used: unreachable, too slow, or it answered nonsense."""


@dataclass(frozen=True)
class FhirResponse:
    status: int
    headers: httpx.Headers
    body: Any  # parsed JSON

    @property
    def resource_type(self) -> str | None:
        return self.body.get("resourceType") if isinstance(self.body, dict) else None

    @property
    def serves_no_history(self) -> bool:
        """For an answer to ``GET Type/id/_history``: nothing of the resource is left (404, 410 or
        an empty Bundle). Any other answer, an error included, counts as history still served."""
        return self.status in GONE or (self.resource_type == "Bundle" and not self.body.get("entry"))


class FhirClient:
    """JSON-only FHIR REST calls against one upstream base URL."""

    def __init__(self, base_url: str, http: httpx.AsyncClient,
                 on_failure: Callable[[int], None] = lambda status: None) -> None:
        """``on_failure`` is told the status (502, 504) of every call that got no usable answer
        (the app counts them in its metrics)."""
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.on_failure = on_failure

    def url(self, path: str) -> str:
        """Absolute URLs (paging links) as they are; paths relative to the base; "" the base."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        for_client: bool = False,
    ) -> FhirResponse:
        """One call; any answer with a JSON body (any status) is returned, the rest raises.

        ``for_client``: made on a client's behalf (with its own ``Authorization``, if any), so the
        proxy's upstream credentials are left out.
        """
        sent = {"Accept": FHIR_JSON, **FRESH, **(headers or {})}
        auth = None if for_client else httpx.USE_CLIENT_DEFAULT
        if json is not None:
            sent["Content-Type"] = FHIR_JSON
        request_id = current_request_id()
        if request_id is not None:
            sent["X-Request-Id"] = request_id  # the upstream's logs join the proxy's
        try:
            response = await self._send(method, self.url(path), params, json, sent, auth)
            return FhirResponse(response.status_code, response.headers, _json_body(_released(response)))
        except httpx.HTTPError as failure:
            raise self._failed(_upstream_error(failure, self.base_url.startswith("https:"))) from None
        except UpstreamError as failure:
            raise self._failed(failure) from None

    def _failed(self, failure: UpstreamError) -> UpstreamError:
        self.on_failure(failure.status)
        return failure

    async def _send(self, method: str, url: str, params: Any, json: Any, headers: dict[str, str],
                    auth: Any) -> httpx.Response:
        """Send once; an idempotent request that failed on a pooled connection the upstream had
        just closed is sent once more. Measured: Node closes idle keep-alive connections after
        5 s, racing httpx's pool, and under load the race is lost often enough to fail a purge.
        Idempotent: a GET or DELETE, or a batch/transaction Bundle of GETs and DELETEs only (a DELETE
        repeated finds the resource gone, which every caller counts as gone). Anything that
        creates or changes a resource is never repeated behind the caller's back."""
        try:
            return await self.http.request(method, url, params=params, json=json, headers=headers, auth=auth)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            if not _idempotent(method, json):
                raise
        return await self.http.request(method, url, params=params, json=json, headers=headers, auth=auth)

    async def capabilities(self, headers: Mapping[str, str] | None = None) -> FhirResponse:
        """The CapabilityStatement; with ``headers`` it is fetched for a client, as the client."""
        return await self.request("GET", "metadata", headers=headers, for_client=headers is not None)


def _idempotent(method: str, body: Any) -> bool:
    if method in ("GET", "DELETE"):
        return True
    if method != "POST" or not isinstance(body, dict) or body.get("type") not in ("batch", "transaction"):
        return False
    entries = body.get("entry") or []
    return all(isinstance(e, dict) and "resource" not in e
               and (e.get("request") or {}).get("method") in ("GET", "DELETE") for e in entries)


def _upstream_error(failure: httpx.HTTPError, over_tls: bool) -> UpstreamError:
    if isinstance(failure, httpx.TimeoutException):
        return UpstreamError(504, "timeout", UPSTREAM_TIMEOUT)
    tls = tls_failure(failure, over_tls)
    if tls is not None:
        return UpstreamError(502, "security" if tls == UPSTREAM_TLS else "transient", tls)
    if isinstance(failure, httpx.ConnectError):
        return UpstreamError(502, "transient", UPSTREAM_UNREACHABLE)
    return UpstreamError(502, "transient", UPSTREAM_MALFORMED)


def _released(response: httpx.Response) -> httpx.Response:
    """The response, read, with httpx's cycle broken: its stream (a ``BoundAsyncStream``) holds
    the response, so the raw body (megabytes for a search page of thousands of resources) would
    otherwise wait for the cyclic garbage collector."""
    response.stream = httpx.ByteStream(b"")
    return response


def _json_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python parses
        raise UpstreamError(502, "transient", UPSTREAM_MALFORMED) from None


def make_http_client(connect: float, read: float, max_connections: int,
                     auth: httpx.Auth | None = None, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The pooled httpx client for the proxy's own calls: one per app; ``auth`` adds the proxy's
    upstream credentials (``upstream.auth``), ``verify`` the TLS context (``upstream.tls``)."""
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(read, connect=connect),
        # idle connections are dropped before common servers' 5 s keep-alive timeout closes them
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=4.0),
        follow_redirects=False,
        auth=auth,
    )
