"""Upstreams that refuse, hang or talk nonsense: the client gets a 502/504 OperationOutcome.

The pass-through has its own HTTP client (purgeproxy.upstream_pipe; respx only patches httpx), so these faults come from
real misbehaving sockets on loopback.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(behaviour: Behaviour) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/fhir"


@pytest.fixture
async def fake_upstream() -> AsyncIterator[Callable[[Behaviour], Awaitable[str]]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(behaviour: Behaviour) -> str:
        server, url = await _serve(behaviour)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.close()


async def _read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    await asyncio.sleep(30)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


async def cut_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n")
    writer.write(b"x" * 1000)
    await writer.drain()
    writer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def test_refused_connection_is_502(make_proxy) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{_free_port()}/fhir")
    status, body = await _get(f"{proxy}/Patient/1")
    assert status == 502
    assert body["resourceType"] == "OperationOutcome"
    assert "cannot be reached" in body["issue"][0]["diagnostics"]


async def test_silent_upstream_is_504_after_the_read_timeout(make_proxy, fake_upstream) -> None:
    upstream = await fake_upstream(hang)
    proxy = await make_proxy(upstream, upstream={"timeouts": {"read": 0.3}})
    status, body = await _get(f"{proxy}/Patient/1")
    assert status == 504
    assert body["issue"][0]["code"] == "timeout"


async def test_non_http_answer_is_502(make_proxy, fake_upstream) -> None:
    proxy = await make_proxy(await fake_upstream(garbage))
    status, body = await _get(f"{proxy}/Patient/1")
    assert status == 502
    assert "malformed" in body["issue"][0]["diagnostics"]


async def test_body_cut_short_breaks_the_client_connection(make_proxy, fake_upstream) -> None:
    """Once the status is sent, a truncated body must not look complete to the client."""
    proxy = await make_proxy(await fake_upstream(cut_mid_body))
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/Binary/1") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_metadata_and_readiness_report_the_failure(make_proxy) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{_free_port()}/fhir")
    status, body = await _get(f"{proxy}/metadata")
    assert status == 502 and body["resourceType"] == "OperationOutcome"
    status, body = await _get(proxy.replace("/fhir", "/readyz"))
    assert status == 503 and body["status"] == "unavailable"
