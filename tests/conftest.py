"""Shared fixtures: real upstream servers (started once per run) and proxies in front of them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from purgeproxy import logs
from purgeproxy.app import create_app
from purgeproxy.config import parse_config
from purgeproxy.serving import ProxyRunner
from tests import log_capture
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


_JOBS_DIR = tempfile.mkdtemp(prefix="purgeproxy-test-jobs-")
atexit.register(shutil.rmtree, _JOBS_DIR, True)


def config_for(upstream_url: str, **sections: dict[str, Any]) -> Any:
    """A validated config for ``upstream_url``, with ``sections`` merged over the defaults.

    Each config gets a job store of its own, so that no test resumes another test's jobs.
    """
    document: dict[str, Any] = {"upstream": {"url": upstream_url},
                                "jobs": {"store": f"{_JOBS_DIR}/{uuid.uuid4().hex}.sqlite3"}}
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return parse_config(document)


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


@pytest.fixture
async def client() -> Any:
    """The proxy's own FHIR client aimed at the respx-scripted upstream (``tests.fake_upstream``)."""
    from purgeproxy.fhir.client import FhirClient, make_http_client
    from tests.fake_upstream import BASE

    http = make_http_client(connect=1, read=1, max_connections=4)
    yield FhirClient(BASE, http)
    await http.aclose()
