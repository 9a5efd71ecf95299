"""A one-shot streaming HTTP client for the memory scenario, run as its own process.

Its own process so that its CPU time and buffers never count against the proxy being sampled.
stdlib ``http.client`` is enough: it streams both ways in 1 MiB pieces without holding the body.

Run: ``python -m bench.client download URL`` or ``python -m bench.client upload URL SIZE [--chunked]``.
Prints one JSON object: status, bytes moved, seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

PIECE = 1024 * 1024
_ZEROS = bytes(PIECE)


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=300), path


def download(url: str) -> tuple[int, int]:
    """GET the URL and discard the body; (status, bytes received)."""
    connection, path = _connection(url)
    connection.request("GET", path)
    response = connection.getresponse()
    total = 0
    while piece := response.read(PIECE):
        total += len(piece)
    return response.status, total


def _zeros(size: int) -> Iterator[bytes]:
    left = size
    while left:
        step = min(left, PIECE)
        yield _ZEROS if step == PIECE else _ZEROS[:step]
        left -= step


def upload(url: str, size: int, chunked: bool) -> tuple[int, int]:
    """POST ``size`` zero bytes, with Content-Length or chunked; (status, bytes the server saw)."""
    connection, path = _connection(url)
    headers = {"Content-Type": "application/octet-stream"}
    if not chunked:
        headers["Content-Length"] = str(size)
    connection.request("POST", path, body=_zeros(size), headers=headers, encode_chunked=chunked)
    response = connection.getresponse()
    answer = response.read()
    try:
        received = int(json.loads(answer)["received"])
    except (ValueError, KeyError, TypeError):
        received = -1
    return response.status, received


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["download", "upload"])
    parser.add_argument("url")
    parser.add_argument("size", type=int, nargs="?", default=0)
    parser.add_argument("--chunked", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.mode == "download":
        status, moved = download(args.url)
    else:
        status, moved = upload(args.url, args.size, args.chunked)
    seconds = time.perf_counter() - started
    print(json.dumps({"status": status, "bytes": moved, "seconds": seconds}))


if __name__ == "__main__":
    main()
