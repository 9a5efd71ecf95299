"""Credentials for the proxy's own upstream calls, as ``httpx.Auth`` flows on the FhirClient.

Only requests to the upstream's own origin and base path get them: a paging link or Location that
points elsewhere must not receive the proxy's token. The pass-through (aiohttp) never uses these.
Secrets are read from their source at use, so rotation needs no restart, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Callable, Generator

import httpx

from purgeproxy.config import UpstreamAuth
from purgeproxy.fhir.client import UpstreamError

REFRESH_MARGIN = 60.0  # seconds before expiry at which a cached token is replaced


class _UpstreamOnly(httpx.Auth):
    def __init__(self, base_url: str) -> None:
        self.base = httpx.URL(base_url.rstrip("/") + "/")

    def ours(self, request: httpx.Request) -> bool:
        url = request.url
        same_origin = (url.scheme, url.host, url.port) == (self.base.scheme, self.base.host, self.base.port)
        return same_origin and (url.path + "/").startswith(self.base.path)


class HeaderAuth(_UpstreamOnly):
    """A fixed ``Authorization`` value (bearer or basic), rebuilt at each request."""

    def __init__(self, base_url: str, header: Callable[[], str]) -> None:
        super().__init__(base_url)
        self.header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.ours(request):
            request.headers["Authorization"] = self.header()
        yield request


class ClientCredentialsAuth(_UpstreamOnly):
    """OAuth 2.0 client credentials: token cached, refreshed before expiry, renewed once on 401."""

    def __init__(self, base_url: str, settings: UpstreamAuth, http: httpx.AsyncClient) -> None:
        super().__init__(base_url)
        self.settings = settings
        self.http = http  # its own client: the token endpoint is another server
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("ClientCredentialsAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self.ours(request):
            yield request
            return
        request.headers["Authorization"] = f"Bearer {await self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self.token(renew=True)}"
            yield request

    async def token(self, renew: bool = False) -> str:
        async with self._lock:
            if renew or self._token is None or time.monotonic() >= self._expires - REFRESH_MARGIN:
                self._token, lifetime = await self._fetch()
                self._expires = time.monotonic() + lifetime
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", **({"scope": self.settings.scope} if self.settings.scope else {})}
        secret = self.settings.client_secret.value() if self.settings.client_secret else ""
        try:
            answer = await self.http.post(self.settings.token_url or "", data=form,
                                          auth=(self.settings.client_id or "", secret),
                                          headers={"Accept": "application/json"})
            body = answer.json() if answer.status_code == 200 else {}
        except (httpx.HTTPError, ValueError, RecursionError):
            body = {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError(502, "security", "the proxy could not obtain an upstream access token")
        lifetime = body.get("expires_in")
        return token, float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 300.0


def _basic(settings: UpstreamAuth) -> Callable[[], str]:
    def header() -> str:
        password = settings.password.value() if settings.password else ""
        pair = f"{settings.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    return header


def upstream_auth(base_url: str, settings: UpstreamAuth, http: httpx.AsyncClient) -> httpx.Auth | None:
    """The auth flow for ``upstream.auth``; ``http`` serves token requests (client credentials)."""
    if settings.type == "bearer" and settings.token is not None:
        token = settings.token
        return HeaderAuth(base_url, lambda: f"Bearer {token.value()}")
    if settings.type == "basic":
        return HeaderAuth(base_url, _basic(settings))
    if settings.type == "client_credentials":
        return ClientCredentialsAuth(base_url, settings, http)
    return None
