"""The operations-only deployment (deploy/nginx/): its template rendered, and nginx started on it.

Shared by the bench (a row: ordinary traffic through nginx straight to the upstream) and by
tests/test_nginx_deployment.py (routing and refusals), so both run the file operators deploy.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from bench.targets import Processes, Target, free_port, wait_ready

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "purgeproxy-operations-only.conf.template"
NAMES = ("LISTEN", "FHIR_BASE", "UPSTREAM", "PURGEPROXY")
_PLACEHOLDER = re.compile(r"\$\{(" + "|".join(NAMES) + r")\}")
_PLAIN_BASE = re.compile(r"(/[A-Za-z0-9_-]+)*")


def render(listen: str, fhir_base: str, upstream: str, purgeproxy: str) -> str:
    """The template with its four names filled in, as ``envsubst`` with that list would."""
    if not _PLAIN_BASE.fullmatch(fhir_base):
        raise ValueError("FHIR_BASE must be a plain path such as /fhir (it is used in a regex)")
    values = {"LISTEN": listen, "FHIR_BASE": fhir_base, "UPSTREAM": upstream, "PURGEPROXY": purgeproxy}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())


def main_conf(workdir: Path, server_conf: Path, log_format_upstream: bool = False) -> str:
    """A minimal nginx.conf around the rendered file: one worker, state under ``workdir``.

    With ``log_format_upstream`` every request is logged with its ``X-Routing-Row`` header and
    the backend nginx chose (``$upstream_addr``), which is what the routing test reads.
    """
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {workdir}/nginx-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    access = (f"    log_format routed '$http_x_routing_row|$upstream_addr|$status';\n"
              f"    access_log {workdir}/routed.log routed;" if log_format_upstream else "    access_log off;")
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
{access}
{temp}
    include {server_conf};
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def write_conf(workdir: Path, listen: int, fhir_base: str, upstream: str, purgeproxy: str,
               log_format_upstream: bool = False) -> Path:
    """Render the deployment into ``workdir`` and return the nginx.conf to start nginx with."""
    server_conf = workdir / "purgeproxy-operations-only.conf"
    server_conf.write_text(render(f"127.0.0.1:{listen}", fhir_base, upstream, purgeproxy))
    conf = workdir / "nginx-operations-only.conf"
    conf.write_text(main_conf(workdir, server_conf, log_format_upstream))
    workdir.chmod(0o755)  # workers run as nobody when we are root
    return conf


def argv(binary: str, workdir: Path, conf: Path) -> list[str]:
    return [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log"),
            "-g", "daemon off;"]


def start_operations_only(procs: Processes, upstream: Target, proxy: Target) -> Target | None:
    """The deployment as a bench row: nginx in front of ``upstream``, destructive requests to
    ``proxy``; the bench's ordinary GETs go straight to the upstream. None without nginx."""
    binary = nginx_binary()
    if binary is None:
        return None
    workdir = procs.workdir / "nginx-operations-only"
    workdir.mkdir(exist_ok=True)
    port = free_port()
    conf = write_conf(workdir, port, "/fhir", _hostport(upstream.base_url), _hostport(proxy.base_url))
    child = procs.start("nginx-operations-only", argv(binary, workdir, conf))
    target = Target("nginx-ops", "nginx operations-only (ordinary → upstream)",
                    f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def _hostport(base_url: str) -> str:
    return base_url.split("://", 1)[1].split("/", 1)[0]
