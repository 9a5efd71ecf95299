"""Shared fixtures: real upstream servers (started once per run) and proxies in front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from purgeproxy import logs
from purgeproxy.app import create_app
from purgeproxy.serving import ProxyRunner
from tests import log_capture
from tests.helpers import TOKEN, config_for
from tests.jwt_tokens import BASIC, SIGNING_KEY, public_jwk
from tests.upstreams.medplum import ensure_installed, running_medplum

ProxyFactory = Callable[..., Awaitable[str]]

logs.configure("debug")
log_capture.install()


@pytest.fixture(autouse=True)
def _no_secrets_in_logs() -> Iterator[None]:
    """No token, secret or query value in any log line of any test (see tests/log_capture.py)."""
    log_capture.install()
    since = len(log_capture.LINES)
    yield
    leaked = log_capture.leaks(since)
    assert not leaked, f"secrets or query values were logged: {leaked[:3]}"


@pytest.fixture(scope="session")
def medplum_base() -> Iterator[str]:
    """A real Medplum FHIR engine over HTTP, one per test run."""
    ensure_installed()
    with running_medplum() as base:
        yield base


@pytest.fixture(scope="session")
def hapi_base() -> Iterator[str]:
    """A real HAPI FHIR JPA server, built with Maven, one per test run."""
    from tests.upstreams.hapi import ensure_built, running_hapi

    ensure_built()
    with running_hapi() as base:
        yield base


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's package) in a throwaway cluster, one per test run."""
    from tests.upstreams.postgres import running_postgres

    with running_postgres() as url:
        yield url


class ProxyTestServer(TestServer):
    """aiohttp's test server on the runner ``purgeproxy serve`` uses (its own parser errors)."""

    async def _make_runner(self, **kwargs: Any) -> ProxyRunner:
        return ProxyRunner(self.app, **kwargs)


@pytest.fixture
async def make_proxy() -> Any:
    """Start purgeproxy in-process in front of ``upstream``; returns the proxy's FHIR base URL."""
    servers: list[TestServer] = []

    async def start(upstream_url: str, **sections: dict[str, Any]) -> str:
        server = ProxyTestServer(create_app(config_for(upstream_url, **sections)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/fhir"))

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(params=["medplum", pytest.param("hapi", marks=pytest.mark.hapi)])
def upstream(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Each real upstream in turn: ``(kind, base URL)``. Modules scripting a fake upstream override it."""
    return request.param, request.getfixturevalue(f"{request.param}_base")


@pytest.fixture
async def proxy(make_proxy: Any, upstream: tuple[str, str]) -> str:
    """A proxy in front of ``upstream`` that accepts the operator token ``tests.helpers.TOKEN``."""
    return await make_proxy(upstream[1], auth={"admin_token": TOKEN})


@pytest.fixture
async def issuer() -> AsyncIterator[dict[str, Any]]:
    """The issuer's JWKS and introspection endpoint on 127.0.0.1; records what was asked."""
    state: dict[str, Any] = {"jwks_calls": 0, "active": {}}

    async def jwks(_request: web.Request) -> web.Response:
        state["jwks_calls"] += 1
        return web.json_response({"keys": [public_jwk(SIGNING_KEY, "k1")]})

    async def introspect(request: web.Request) -> web.Response:
        form = await request.post()
        if request.headers.get("Authorization") != BASIC:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response(state["active"].get(form.get("token"), {"active": False}))

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_post("/introspect", introspect)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["url"] = str(server.make_url(""))
    yield state
    await server.close()


@pytest.fixture
async def client() -> Any:
    """The proxy's own FHIR client aimed at the respx-scripted upstream (``tests.fake_upstream``)."""
    from purgeproxy.fhir.client import FhirClient, make_http_client
    from tests.fake_upstream import BASE

    http = make_http_client(connect=1, read=1, max_connections=4)
    yield FhirClient(BASE, http)
    await http.aclose()
