"""A fixed-latency fake FHIR upstream, as a raw asyncio protocol.

Why not aiohttp: at concurrency 200 and 10 ms latency the theoretical rate is 20k req/s, and an
aiohttp server spends most of a core per ~6-8k req/s. A hand-rolled HTTP/1.1 protocol that answers
from a timer (``call_later``) instead of a coroutine costs a fraction of that, so the upstream is
not the bottleneck of the benchmark it exists for. ``--workers`` forks extra processes sharing the
port through ``SO_REUSEPORT`` in case one process is still not enough.

Routes:

* ``GET /fhir/Patient/<id>``: ~1 KB Patient JSON after ``--delay`` seconds (default 10 ms).
* ``GET /fhir/Binary/big?size=N``: N bytes streamed with flow control (memory scenario).
* ``POST /fhir/Binary``: reads and counts the body (Content-Length or chunked), answers the count.

Run: ``python -m bench.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from urllib.parse import parse_qs, urlsplit

BIG_CHUNK = 256 * 1024
_ZEROS = bytes(BIG_CHUNK)
_MAX_HEAD = 64 * 1024


def patient_body(patient_id: str) -> bytes:
    """A realistic ~1 KB Patient, so the proxy moves the size of body it will really see."""
    patient = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T12:00:00.000+00:00",
                 "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Doe, 1970-01-01</div>"},
        "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1",
                        "value": "12345", "period": {"start": "2001-05-06"}}],
        "active": True,
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]},
                 {"use": "usual", "given": ["Janie"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
                    {"system": "email", "value": "jane.doe@example.org", "use": "home"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [{"use": "home", "type": "both", "line": ["534 Erewhon St"],
                     "city": "PleasantVille", "district": "Rainbow", "state": "Vic",
                     "postalCode": "3999", "period": {"start": "1974-12-25"}}],
        "contact": [{"relationship": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
            "name": {"family": "Doe", "given": ["John"]},
            "telecom": [{"system": "phone", "value": "+33 (237) 998327"}]}],
        "managingOrganization": {"reference": "Organization/1"},
    }
    return json.dumps(patient, separators=(",", ":")).encode()


def _head(status: str, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()


def _canned(status: str, body: bytes, content_type: str = "application/fhir+json") -> bytes:
    return _head(status, content_type, len(body)) + body


_PATIENT = patient_body("example")
PATIENT_RESPONSE = _canned("200 OK", _PATIENT)
NOT_FOUND = _canned("404 Not Found", b'{"resourceType":"OperationOutcome"}')


class _Request:
    """The parts of a request head that routing needs."""

    __slots__ = ("method", "target", "length", "chunked")

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ", 2)
        self.length = 0
        self.chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                self.length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True


class _ChunkedCounter:
    """Counts the payload bytes of a chunked body without copying them; True when done."""

    def __init__(self) -> None:
        self.total = 0
        self._skip = 0  # payload bytes (+2 for CRLF) still to skip
        self._line = bytearray()
        self._trailers = False

    def feed(self, data: memoryview) -> tuple[bool, int]:
        """Consume bytes; returns (finished, bytes used) so leftovers start the next request."""
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            end = bytes(data[pos:pos + 4096]).find(b"\n")
            if end < 0:
                self._line += data[pos:]
                return False, len(data)
            self._line += data[pos:pos + end]
            pos += end + 1
            line = bytes(self._line).strip()
            self._line.clear()
            if self._trailers:
                if not line:
                    return True, pos
                continue
            size = int(line.split(b";", 1)[0] or b"0", 16)
            if size == 0:
                self._trailers = True
            else:
                self.total += size
                self._skip = size + 2
        return False, pos


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered one at a time, in order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.body_left = 0
        self.chunks: _ChunkedCounter | None = None
        self.received = 0
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.body_left or self.chunks:
            data = self._consume_body(data)
        if data:
            self.buffer += data
        self._next()

    def _consume_body(self, data: bytes) -> bytes:
        """Count upload bytes as they arrive; returns what belongs to the next request."""
        if self.chunks is not None:
            done, used = self.chunks.feed(memoryview(data))
            if done:
                self.received, self.chunks = self.chunks.total, None
                self._answer_upload()
            return data[used:]
        used = min(self.body_left, len(data))
        self.body_left -= used
        self.received += used
        if not self.body_left:
            self._answer_upload()
        return data[used:]

    def _next(self) -> None:
        if self.busy or self.body_left or self.chunks:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD and self.transport:
                self.transport.close()
            return
        request = _Request(bytes(self.buffer[:end]))
        rest = bytes(self.buffer[end + 4:])
        self.buffer.clear()
        self.busy = True
        self._route(request)
        if rest:
            self.data_received(rest)

    def _route(self, request: _Request) -> None:
        path = request.target.split("?", 1)[0]
        if request.method == "POST" and path == "/fhir/Binary":
            self._start_upload(request)
        elif request.method == "GET" and path == "/fhir/Binary/big":
            query = parse_qs(urlsplit(request.target).query)
            size = int(query.get("size", ["1048576"])[0])
            asyncio.get_running_loop().create_task(self._stream(size))
        elif request.method == "GET" and path.startswith("/fhir/Patient/"):
            asyncio.get_running_loop().call_later(self.delay, self._send, PATIENT_RESPONSE)
        else:
            self._send(NOT_FOUND)

    def _send(self, response: bytes) -> None:
        self.busy = False
        if self.transport is not None:
            self.transport.write(response)
            self._next()

    def _start_upload(self, request: _Request) -> None:
        self.received = 0
        if request.chunked:
            self.chunks = _ChunkedCounter()
        elif request.length:
            self.body_left = request.length
        else:
            self._answer_upload()

    def _answer_upload(self) -> None:
        body = json.dumps({"resourceType": "Binary", "received": self.received}).encode()
        self._send(_canned("201 Created", body))

    async def _stream(self, size: int) -> None:
        """Send ``size`` zero bytes, waiting whenever the socket buffer is full."""
        if self.transport is None:
            return
        self.transport.write(_head("200 OK", "application/octet-stream", size))
        left = size
        while left and self.transport is not None:
            await self.can_write.wait()
            if self.transport is None:
                return
            step = min(left, BIG_CHUNK)
            self.transport.write(_ZEROS if step == BIG_CHUNK else _ZEROS[:step])
            left -= step
        self._send(b"")


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    return sock


async def serve(host: str, port: int, delay: float) -> None:
    """Serve forever on a SO_REUSEPORT socket (each worker process binds its own)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(delay), sock=_listening_socket(host, port)
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.010, help="seconds before each Patient")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args(argv)
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break  # children serve too; the parent's process group is killed as a whole
    try:
        asyncio.run(serve(args.host, args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
