"""A plain HTTP upstream that serves and swallows large bodies, for streaming-memory tests.

Not a FHIR server: it stands in for a large ``Binary`` so that a body bigger than the proxy's
memory budget can cross the proxy without the upstream itself holding it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = b"\0" * (1 << 20)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        size = int(parse_qs(urlsplit(self.path).query).get("size", ["0"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            part = CHUNK[: min(size, len(CHUNK))]
            self.wfile.write(part)
            size -= len(part)

    def do_POST(self) -> None:  # noqa: N802
        received = self._drain()
        body = json.dumps({"received": received}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drain(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            return self._drain_chunked()
        remaining = int(self.headers.get("Content-Length", "0"))
        received = 0
        while remaining > 0:
            part = self.rfile.read(min(remaining, 1 << 20))
            if not part:
                break
            received += len(part)
            remaining -= len(part)
        return received

    def _drain_chunked(self) -> int:
        received = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return received
            while size > 0:
                part = self.rfile.read(min(size, 1 << 20))
                received += len(part)
                size -= len(part)
            self.rfile.readline()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def running_bulk() -> Iterator[str]:
    """Serve on a free loopback port in a thread; yields the base URL ``http://…/fhir``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
