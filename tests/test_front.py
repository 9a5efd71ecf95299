"""The pass-through's front (purgeproxy.front): what it takes, what it hands to aiohttp, and that
a request it hands over is judged by the proxy's one path, never forwarded as something else.

The client side is a raw socket, so that several requests travel in one segment (pipelined), as
a hostile client may send them; the upstream is a raw recording server on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

PATIENT = json.dumps({"resourceType": "Patient", "id": "a"}).encode()


class Recorder:
    """A keep-alive upstream that records every request line and answers a Patient; paths
    ending in ``/chunked`` are answered with a chunked body."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.lines.append(line)
                method, target, _ = line.split(" ")
                if target.endswith("/chunked"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for piece in (PATIENT[:10], PATIENT[10:]):
                        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(PATIENT))
                    if method != "HEAD":
                        writer.write(PATIENT)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def patient_lines(self) -> list[str]:
        return [line for line in self.lines if "/metadata" not in line]


@pytest.fixture
async def recorded(make_proxy) -> AsyncIterator[tuple[Recorder, str, int]]:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = await make_proxy(f"http://127.0.0.1:{port}/fhir")
    proxy_port = int(base.rsplit(":", 1)[1].split("/", 1)[0])
    yield recorder, base, proxy_port
    server.close()


Answer = tuple[int, dict[str, str], bytes]


async def _answers(reader: asyncio.StreamReader, count: int, head_only: tuple[int, ...] = ()) -> list[Answer]:
    """``count`` answers read off a raw connection (Content-Length or chunked framing)."""
    found = []
    for index in range(count):
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        headers = {name.lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        body = b""
        if index in head_only:
            pass
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while size := int((await reader.readline()).strip(), 16):
                body += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        found.append((status, headers, body))
    return found

async def _exchange(port: int, count: int, head_only: tuple[int, ...] = (), *, data: bytes) -> list[Answer]:
    """``data`` written on a fresh connection to the proxy, and the first ``count`` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await _answers(reader, count, head_only=head_only)
    finally:
        writer.close()



async def test_a_destructive_request_pipelined_after_an_ordinary_get_is_judged_never_forwarded(recorded) -> None:
    recorder, _, port = recorded
    first, refused, last = await _exchange(port, 3, data=(
        b"GET /fhir/Patient/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"DELETE /fhir/Patient/a?_cascade=delete HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /fhir/Patient/b HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert first[0] == 200 and first[2] == PATIENT
    assert 400 <= refused[0] < 500 and b"OperationOutcome" in refused[2]
    assert last[0] == 200 and last[2] == PATIENT
    assert recorder.patient_lines() == ["GET /fhir/Patient/a HTTP/1.1", "GET /fhir/Patient/b HTTP/1.1"]


async def test_a_percent_encoded_operation_is_left_to_the_routes(recorded) -> None:
    """``%24purge`` is ``$purge`` once decoded: the front does not take it, and it never reaches
    the upstream as an ordinary read."""
    recorder, _, port = recorded
    [(status, _, body)] = await _exchange(port, 1, data=(
        b"GET /fhir/Patient/a/%24purge HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status >= 400 and b"OperationOutcome" in body
    assert not any("purge" in line for line in recorder.lines)


async def test_head_and_chunked_answers_keep_the_connection_in_step(recorded) -> None:
    recorder, _, port = recorded
    head, chunked, plain = await _exchange(port, 3, head_only=(0,), data=(
        b"HEAD /fhir/Patient/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /fhir/Patient/chunked HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /fhir/Patient/a HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\n\r\n"))
    assert head[0] == 200 and head[1]["content-length"] == str(len(PATIENT))
    assert chunked[0] == 200 and chunked[2] == PATIENT
    assert plain[0] == 200 and plain[2] == PATIENT and plain[1]["x-request-id"] == "mine-1"
    assert "connection" not in plain[1] and "date" in plain[1]
    assert recorder.patient_lines() == ["HEAD /fhir/Patient/a HTTP/1.1", "GET /fhir/Patient/chunked HTTP/1.1",
                                        "GET /fhir/Patient/a HTTP/1.1"]


async def test_a_request_with_a_body_is_handed_over_whole(recorded) -> None:
    """A GET with a body is not the front's: aiohttp's handler gets every byte of it."""
    recorder, _, port = recorded
    first, posted = await _exchange(port, 2, data=(
        b"GET /fhir/Patient/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(PATIENT), PATIENT)))
    assert first[0] == 200 and posted[0] == 200
    assert recorder.patient_lines() == ["GET /fhir/Patient/a HTTP/1.1", "POST /fhir/Patient HTTP/1.1"]


async def test_an_idle_connection_is_closed_after_the_keepalive_time(recorded, monkeypatch) -> None:
    monkeypatch.setattr("purgeproxy.front._KEEPALIVE", 0.3)
    _, _, port = recorded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /fhir/Patient/a HTTP/1.1\r\nHost: x\r\n\r\n")
    [(status, _, _)] = await _answers(reader, 1)
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy, well before 5 s
    writer.close()


async def test_a_bug_in_the_front_is_a_500_outcome_that_echoes_nothing(recorded, monkeypatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("secret-looking detail")

    monkeypatch.setattr("purgeproxy.front.client_response_headers", broken)
    _, _, port = recorded
    [(status, headers, body)] = await _exchange(port, 1, data=b"GET /fhir/Patient/a?name=Doe HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500 and headers["content-type"].startswith("application/fhir+json")
    assert b"OperationOutcome" in body and b"secret" not in body and b"Doe" not in body
