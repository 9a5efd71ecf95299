"""``purgeproxy serve`` as a child process on a free port, for the tests that kill or restart it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    base: str  # the FHIR base, e.g. http://127.0.0.1:1234/fhir
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(config: Path, tmp_path: Path) -> Iterator[Proxy]:
    """``purgeproxy serve`` as a child process; stopped (if still alive) at the end."""
    port = free_port()
    log = tmp_path / f"proxy-{port}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "purgeproxy", "serve", "--config", str(config),
                                    "--port", str(port)], cwd=ROOT, stdout=sink, stderr=sink,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proxy = Proxy(process, f"http://127.0.0.1:{port}/fhir", log)
    try:
        wait_healthy(proxy)
        yield proxy
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def wait_healthy(proxy: Proxy) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(proxy.base.rsplit("/", 1)[0] + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"the proxy did not start:\n{proxy.log.read_text()[-3000:]}")
