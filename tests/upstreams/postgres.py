"""A real PostgreSQL server for the job-store tests: Debian's package, a throwaway cluster.

``initdb`` into a temporary directory and ``pg_ctl start`` on a free port, with the socket in the
same directory, so nothing touches a system cluster. initdb refuses to run as root, so as root
the cluster belongs to the ``postgres`` user that Debian's package creates. Standard library only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 60


def binaries() -> Path:
    """Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (make test does)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_owner(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed ({done.returncode}):\n{done.stdout}")


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:<port>/postgres``; the cluster is removed after."""
    bin_dir = binaries()
    root = Path(tempfile.mkdtemp(prefix="purgeproxy-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
              "--no-sync", "-E", "UTF8"])
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
              "-t", str(START_TIMEOUT_S), "-o", f"-p {port} -k {root} -h 127.0.0.1 -F", "start"])
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # manual use: python -m tests.upstreams.postgres
    with running_postgres() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            input()
