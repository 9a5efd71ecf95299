"""Launcher for the HAPI FHIR JPA server used as purgeproxy's real test upstream.

The server itself lives in ``upstreams/hapi`` (a Maven project); this module only
builds it through ``hapi.sh build`` and runs the jar, so tests need nothing but
the standard library, Java 17 and Maven.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HAPI_DIR = REPO_ROOT / "upstreams" / "hapi"
HAPI_SH = HAPI_DIR / "hapi.sh"
JAR = HAPI_DIR / "target" / "hapi-upstream.jar"

# Same defaults as hapi.sh: a capped heap keeps the JVM polite on small CI machines,
# C1-only compilation shortens start-up, which dominates test runs.
DEFAULT_JAVA_OPTS = "-Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_built() -> pathlib.Path:
    """Build the jar once (hapi.sh skips Maven when it is up to date) and return its path.

    Raises RuntimeError with the end of Maven's output, because a bare
    CalledProcessError would hide why the build failed.
    """
    proc = subprocess.run(
        ["bash", str(HAPI_SH), "build"],
        check=False,
        cwd=HAPI_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0 or not JAR.is_file():
        raise RuntimeError(f"building the HAPI upstream failed (exit {proc.returncode}):\n{_tail(proc.stdout)}")
    return JAR


def _free_port() -> int:
    """Ask the OS for an unused port, so parallel runs do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metadata_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/metadata", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first so Spring closes H2 cleanly; SIGKILL if the JVM hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_hapi(port: int = 0) -> Iterator[str]:
    """Run a fresh HAPI server and yield its FHIR base URL ``http://127.0.0.1:PORT/fhir``.

    Each call gets its own temporary H2 directory, so no state leaks between
    test sessions; the process and the directory are removed on exit.
    """
    jar = ensure_built()
    if port == 0:
        port = _free_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    if _metadata_ok(base_url):
        raise RuntimeError(f"something already answers at {base_url}")
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="purgeproxy-hapi-"))
    log_path = data_dir / "hapi.log"
    java_opts = shlex.split(os.environ.get("HAPI_JAVA_OPTS", DEFAULT_JAVA_OPTS))
    cmd = ["java", *java_opts, "-jar", str(jar), str(port), str(data_dir / "db")]
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _metadata_ok(base_url):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"HAPI exited with {proc.returncode} during start-up:\n"
                        f"{_tail(log_path.read_text(errors='replace'))}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"HAPI did not answer {base_url}/metadata within {START_TIMEOUT_S:.0f}s:\n"
                        f"{_tail(log_path.read_text(errors='replace'))}"
                    )
                time.sleep(0.5)
            yield base_url
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
