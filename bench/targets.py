"""Starting and stopping the processes under test: upstream, purgeproxy, nginx, httpx pass-through.

Every child gets its own session (process group) so that a Ctrl-C in the terminal reaches only
the orchestrator, which then stops each group itself: workers forked by nginx or by the upstream
die with their parent instead of lingering on a port. ``Processes`` is a context manager and the
only way to start a child here, so an exception anywhere still ends in clean-up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PATIENT_PATH = "/Patient/example"
STOP_GRACE_SECONDS = 5.0


def free_port() -> int:
    """A port nobody listens on right now (the small race is acceptable on a benchmark box)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A started process with its log file, so a failed start can show why."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it has not gone in time."""
        if self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # our child is its group's leader (start_new_session)
    except ProcessLookupError:
        pass


@dataclass
class Processes:
    """Owns every child process of a benchmark run and stops them all on exit, in reverse order."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        while self.children:
            self.children.pop().stop()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)


@dataclass(frozen=True)
class Target:
    """Something wrk can load: a FHIR base URL and the process to watch (for RSS)."""

    key: str
    label: str
    base_url: str
    child: Child

    @property
    def patient_url(self) -> str:
        return self.base_url + PATIENT_PATH


def wait_ready(child: Child, url: str, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.popen.returncode}):\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready at {url} after {timeout}s:\n{child.log_tail()}")


def start_upstream(procs: Processes, delay: float = 0.010, workers: int = 1) -> Target:
    port = free_port()
    child = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port),
                                     "--delay", str(delay), "--workers", str(workers)])
    target = Target("direct", "direct (no proxy)", f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def _purgeproxy_argv() -> list[str]:
    script = Path(sys.executable).with_name("purgeproxy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "purgeproxy"]


def purgeproxy_supports_workers() -> bool:
    """Whether ``purgeproxy serve`` has a ``--workers`` option yet (then a row is added)."""
    help_text = subprocess.run(
        [*_purgeproxy_argv(), "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--workers" in help_text


def start_purgeproxy(
    procs: Processes, upstream: Target, log_level: str = "warning", workers: int | None = None
) -> Target:
    """purgeproxy with the minimal config; ``workers`` only once the CLI supports it."""
    port = free_port()
    key = f"purgeproxy-{log_level}" + (f"-w{workers}" if workers else "")
    config = procs.workdir / f"{key}.yaml"
    config.write_text(
        f"upstream: {{url: {upstream.base_url}}}\n"
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"logging: {{level: {log_level}}}\n"
    )
    argv = [*_purgeproxy_argv(), "serve", "--config", str(config)]
    if workers:
        argv += ["--workers", str(workers)]
    child = procs.start(key, argv)
    label = f"purgeproxy (log {log_level}" + (f", {workers} workers)" if workers else ")")
    target = Target(key, label, f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def start_httpx(procs: Processes, upstream: Target) -> Target:
    port = free_port()
    origin = upstream.base_url.rsplit("/fhir", 1)[0]
    child = procs.start("httpx-passthrough", [
        sys.executable, "-m", "bench.httpx_passthrough", "--port", str(port), "--upstream", origin,
    ])
    target = Target("httpx", "httpx pass-through", f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def nginx_conf(workdir: Path, listen: int, upstream_port: int) -> str:
    """A plain reverse proxy, as an operator would write it: keep-alive to the upstream, 1 worker.

    One worker process, because purgeproxy runs in one process: the comparison is per process.
    """
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/nginx-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_max_body_size 0;
{temp}
    upstream fhir {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://fhir;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, upstream: Target) -> Target | None:
    """nginx as the reference reverse proxy, or None when it is not installed."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    port = free_port()
    upstream_port = int(upstream.base_url.split(":")[2].split("/")[0])
    conf = procs.workdir / "nginx.conf"
    conf.write_text(nginx_conf(procs.workdir, port, upstream_port))
    procs.workdir.chmod(0o755)  # workers run as nobody when we are root
    child = procs.start("nginx", [binary, "-p", str(procs.workdir), "-c", str(conf),
                                  "-e", str(procs.workdir / "nginx-error.log"),
                                  "-g", "daemon off;"])
    target = Target("nginx", "nginx (1 worker)", f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def _status(pid: int, *names: str) -> dict[str, int]:
    """The named counts of ``/proc/PID/status`` (the first number of each line); 0 each once the
    process is gone."""
    values = dict.fromkeys(names, 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, from /proc; (0, 0) once it is gone."""
    values = _status(pid, "VmRSS", "VmHWM")
    return values["VmRSS"], values["VmHWM"]


def preempted(pid: int) -> int:
    """How often so far the kernel took the CPU from the process's main thread while it could
    still run (involuntary context switches); 0 once it is gone."""
    return _status(pid, "nonvoluntary_ctxt_switches")["nonvoluntary_ctxt_switches"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
