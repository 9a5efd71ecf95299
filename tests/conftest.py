"""Shared fixtures: real upstream servers (started once per run) and proxies in front of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from purgeproxy import logs
from purgeproxy.app import create_app
from purgeproxy.config import parse_config
from tests.upstreams.medplum import ensure_installed, running_medplum

ProxyFactory = Callable[..., Awaitable[str]]

logs.configure("debug")


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


def config_for(upstream_url: str, **sections: dict[str, Any]) -> Any:
    """A validated config for ``upstream_url``, with ``sections`` merged over the defaults."""
    document: dict[str, Any] = {"upstream": {"url": upstream_url}}
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return parse_config(document)


@pytest.fixture
async def make_proxy() -> Any:
    """Start purgeproxy in-process in front of ``upstream``; returns the proxy's FHIR base URL."""
    servers: list[TestServer] = []

    async def start(upstream_url: str, **sections: dict[str, Any]) -> str:
        server = TestServer(create_app(config_for(upstream_url, **sections)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/fhir"))

    yield start
    for server in servers:
        await server.close()
