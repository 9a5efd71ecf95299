"""Launch the Medplum-based FHIR upstream (upstreams/medplum/server.js) for integration tests.

The upstream is a real FHIR engine (Medplum's FhirRouter over an in-memory repository), so
tests exercise the proxy against genuine FHIR status codes, bundles and OperationOutcomes
rather than hand-written fakes. Standard library only, so it works before any test deps.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

UPSTREAM_DIR = Path(__file__).resolve().parents[2] / "upstreams" / "medplum"
_LOCKFILE = UPSTREAM_DIR / "package-lock.json"
_NODE_MODULES = UPSTREAM_DIR / "node_modules"
# Written after a successful `npm ci`; holds the hash of the package-lock.json it installed.
_STAMP = _NODE_MODULES / ".purgeproxy-install-stamp"
_READY_PREFIX = "READY "
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
NPM_TIMEOUT_S = 600.0


def _lock_digest() -> str:
    return hashlib.sha256(_LOCKFILE.read_bytes()).hexdigest()


def _is_installed() -> bool:
    """True when node_modules was installed by `npm ci` from the current package-lock.json."""
    if not (_NODE_MODULES / "@medplum" / "fhir-router" / "package.json").is_file():
        return False
    try:
        return _STAMP.read_text().strip() == _lock_digest()
    except OSError:
        return False


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise installs across processes (e.g. pytest-xdist workers) so two `npm ci` never race."""
    import fcntl  # POSIX only; the project's machines are Linux

    key = hashlib.sha256(str(UPSTREAM_DIR).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"purgeproxy-medplum-npm-{key}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed() -> None:
    """Run `npm ci` in upstreams/medplum if node_modules is missing or older than package-lock.json.

    Raises RuntimeError carrying npm's output when npm is missing or the install fails,
    so a broken environment shows up as one clear error instead of a failed server start.
    """
    if _is_installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; Node.js >= 20.19 with npm is needed for the Medplum upstream")
    with _install_lock():
        if _is_installed():  # another process installed it while we waited
            return
        try:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=UPSTREAM_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=NPM_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"npm ci timed out after {NPM_TIMEOUT_S:.0f}s:\n{exc.output or ''}") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci failed in {UPSTREAM_DIR} (exit {proc.returncode}):\n{proc.stdout}")
        _STAMP.write_text(_lock_digest() + "\n")


def _pump_lines(stream: IO[str], lines: "queue.Queue[str | None]") -> None:
    """Read the server's stdout on a thread: keeps the pipe drained and lets the caller wait with a timeout."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_medplum(port: int = 0) -> Iterator[str]:
    """Start the Medplum upstream on 127.0.0.1 and yield its FHIR base URL (e.g. http://127.0.0.1:41234/fhir).

    port=0 lets the server pick a free port, so parallel test runs do not collide. The
    process is stopped with SIGTERM (then SIGKILL after 5 s) when the block exits.
    """
    ensure_installed()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH; Node.js >= 20.19 is needed for the Medplum upstream")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [node, "server.js", "--port", str(port), "--host", "127.0.0.1", "--base", "/fhir"],
            cwd=UPSTREAM_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True).start()
            base_url = _wait_ready(proc, lines, stderr)
            yield base_url
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[str], lines: "queue.Queue[str | None]", stderr: IO[str]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:  # stdout closed: the server exited
            proc.wait(timeout=STOP_GRACE_S)
            break
        if line.startswith(_READY_PREFIX):
            return line[len(_READY_PREFIX):].strip()
        seen.append(line)
    stderr.seek(0)
    status = "exited with code %s" % proc.returncode if proc.poll() is not None else "did not report READY in time"
    raise RuntimeError(
        f"Medplum upstream {status} (timeout {READY_TIMEOUT_S:.0f}s)\n"
        f"stdout:\n{''.join(seen)}\nstderr:\n{stderr.read()}"
    )


if __name__ == "__main__":  # manual use: python -m tests.upstreams.medplum
    with running_medplum() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
