"""Bodies larger than the proxy's memory budget stream through a real ``purgeproxy serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.upstreams.bulk import running_bulk

BUDGET = 50 * 1024 * 1024
BODY = 300 * 1024 * 1024  # six times the budget


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def served_proxy(tmp_path: Path) -> Iterator[tuple[str, int]]:
    with running_bulk() as upstream:
        port = _free_port()
        config = tmp_path / "config.yaml"
        config.write_text(f"upstream: {{url: '{upstream}'}}\nlogging: {{level: warning}}\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "purgeproxy", "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        try:
            yield f"{base}/fhir", process.pid
        finally:
            process.terminate()
            process.wait(10)


def _zeros(total: int) -> Iterator[bytes]:
    chunk = b"\0" * (1 << 20)
    while total > 0:
        yield chunk[: min(total, len(chunk))]
        total -= len(chunk)


def test_large_download_and_upload_keep_memory_flat(served_proxy: tuple[str, int]) -> None:
    proxy, pid = served_proxy
    httpx.get(f"{proxy}/Binary/big?size=1024", timeout=10)  # warm up pools and code paths
    before = _peak_rss(pid)
    received = 0
    with httpx.stream("GET", f"{proxy}/Binary/big?size={BODY}", timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += len(chunk)
    assert received == BODY
    upload = httpx.post(f"{proxy}/Binary", content=_zeros(BODY), timeout=60,
                        headers={"Content-Type": "application/octet-stream"})
    assert upload.json() == {"received": BODY}
    growth = _peak_rss(pid) - before
    assert growth < BUDGET, f"peak RSS grew by {growth / 2**20:.1f} MiB"
