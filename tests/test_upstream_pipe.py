"""HTTP/1.1 framing of the pass-through's own upstream client (purgeproxy.upstream_pipe).

Through the proxy, against scripted sockets on loopback that record the bytes they receive and
answer exactly the bytes each test gives: keep-alive reuse, chunked both ways, HEAD, interim
100 answers, bodies framed by the end of the connection, stale kept-alive connections, the pool's
limit, and a header that would split the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from multidict import CIMultiDict

from purgeproxy.upstream_pipe import UpstreamError, UpstreamPipe

Answer = Callable[[bytes, bytes], bytes | None]  # (request head, body) -> answer bytes; None closes


@dataclass
class Scripted:
    """An upstream that reads whole requests (Content-Length or chunked) and answers each."""

    answer: Answer
    url: str = ""
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    close_after_each: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                body = await _read_body(reader, head)
                self.requests.append((head, body))
                answer = self.answer(head, body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_each:
                    return
        finally:
            writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def ok(body: bytes = b'{"resourceType":"Patient"}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n%b\r\n%b"
            % (len(body), extra, body))


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Answer], Awaitable[Scripted]]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(answer: Answer) -> Scripted:
        upstream = Scripted(answer)
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        servers.append(server)
        upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/fhir"
        return upstream

    yield start
    for server in servers:
        server.close()


async def test_kept_alive_connection_serves_the_next_requests(make_proxy, scripted) -> None:
    upstream = await scripted(lambda head, body: ok())
    proxy = await make_proxy(upstream.url)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(f"{proxy}/Patient/1") as response:
                assert response.status == 200
                assert await response.read() == b'{"resourceType":"Patient"}'
    assert len(upstream.requests) == 5
    assert upstream.connections == 1
    assert upstream.requests[0][0].startswith(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_chunked_answer_and_chunked_upload_arrive_whole(make_proxy, scripted) -> None:
    def answer(head: bytes, body: bytes) -> bytes:
        pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces)
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n" \
            + chunks + b"0\r\n\r\n"

    upstream = await scripted(answer)
    proxy = await make_proxy(upstream.url)
    payload = bytes(range(256)) * 2000

    async def upload() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 50_000):
            yield payload[i:i + 50_000]

    async with aiohttp.ClientSession() as http, http.post(
            f"{proxy}/Binary", data=upload(), headers={"Content-Type": "application/octet-stream"}) as response:
        assert response.status == 200
        assert await response.read() == payload
    head, body = upstream.requests[0]
    assert b"transfer-encoding: chunked" in head.lower() and body == payload


async def test_head_answer_has_no_body_and_the_next_request_works(make_proxy, scripted) -> None:
    def answer(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"HEAD"):  # the length of the body a GET would have, and no body
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 26\r\n\r\n"
        return ok()

    upstream = await scripted(answer)
    proxy = await make_proxy(upstream.url)
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{proxy}/Patient/1") as response:
            assert response.status == 200 and response.headers["Content-Length"] == "26"
        async with http.get(f"{proxy}/Patient/1") as response:
            assert await response.read() == b'{"resourceType":"Patient"}'


async def test_interim_100_answer_is_skipped(make_proxy, scripted) -> None:
    upstream = await scripted(lambda head, body: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"ok":1}'))
    proxy = await make_proxy(upstream.url)
    async with aiohttp.ClientSession() as http, http.put(f"{proxy}/Patient/1", data=b"{}") as response:
        assert response.status == 200
        assert await response.read() == b'{"ok":1}'


async def test_body_ended_by_closing_the_connection_is_whole(make_proxy, scripted) -> None:
    body = b"x" * 300_000
    upstream = await scripted(lambda head, _: b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                              b"Connection: close\r\n\r\n" + body)
    upstream.close_after_each = True
    proxy = await make_proxy(upstream.url)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{proxy}/Binary/1") as response:
                assert response.status == 200
                assert await response.read() == body
    assert upstream.connections == 2


async def test_stale_kept_alive_connection_is_retried_for_a_read_only(make_proxy, scripted) -> None:
    """The upstream drops an idle connection without saying so: a GET goes again on a new one."""
    upstream = await scripted(lambda head, body: ok())
    proxy = await make_proxy(upstream.url)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy}/Patient/1") as response:
            assert response.status == 200
        upstream.answer = lambda head, body: None  # the kept connection closes without answering
        upstream.close_after_each = True
        async with http.get(f"{proxy}/Patient/1") as response:
            # retried once on a fresh connection, which also closes: the honest 502
            assert response.status == 502
        assert [h.split(b" ")[0] for h, _ in upstream.requests] == [b"GET", b"GET", b"GET"]
        upstream.answer, upstream.close_after_each = (lambda head, body: ok()), False
        async with http.get(f"{proxy}/Patient/1") as response:
            assert response.status == 200  # a kept-alive connection again
        upstream.answer = lambda head, body: None
        upstream.requests.clear()
        async with http.post(f"{proxy}/Patient", data=b"{}") as response:
            assert response.status == 502
        assert [h.split(b" ")[0] for h, _ in upstream.requests] == [b"POST"]  # never sent twice


async def test_pool_limit_queues_requests_beyond_it(make_proxy, scripted) -> None:
    upstream = await scripted(lambda head, body: ok())
    proxy = await make_proxy(upstream.url, upstream={"pool": {"max_connections": 1}})
    async with aiohttp.ClientSession() as http:
        async def one() -> int:
            async with http.get(f"{proxy}/Patient/1") as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(one() for _ in range(10))) == [200] * 10
    assert upstream.connections == 1


async def test_line_break_in_a_header_is_never_sent(scripted) -> None:
    upstream = await scripted(lambda head, body: ok())
    pipe = UpstreamPipe(upstream.url, 4, 30.0, 5.0, 5.0, None)
    try:
        with pytest.raises(UpstreamError):
            await pipe.request("GET", "/Patient/1", CIMultiDict({"X-Evil": "a\r\nDELETE /fhir/Patient/1"}), None)
        assert upstream.requests == []
    finally:
        await pipe.close()


async def test_host_header_names_host_and_port_never_userinfo(scripted) -> None:
    upstream = await scripted(lambda head, body: ok())
    with_userinfo = upstream.url.replace("http://", "http://someone:secret@")
    pipe = UpstreamPipe(with_userinfo, 4, 30.0, 5.0, 5.0, None)
    try:
        async with await pipe.request("GET", "/Patient/1", CIMultiDict(), None) as answer:
            assert answer.status == 200 and await answer.read() == b'{"resourceType":"Patient"}'
    finally:
        await pipe.close()
    head = upstream.requests[0][0]
    port = upstream.url.split(":")[2].split("/")[0]
    assert head.startswith(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: 127.0.0.1:%b\r\n" % port.encode())
    assert b"secret" not in head and b"someone" not in head


async def test_idle_connections_past_keep_alive_are_closed(scripted) -> None:
    upstream = await scripted(lambda head, body: ok())
    pipe = UpstreamPipe(upstream.url, 4, 0.2, 5.0, 5.0, None)
    try:
        async with await pipe.request("GET", "/Patient/1", CIMultiDict(), None) as answer:
            await answer.read()
        assert len(pipe._idle) == 1
        await asyncio.sleep(0.5)
        assert pipe._idle == [] and pipe._open == 0
    finally:
        await pipe.close()
