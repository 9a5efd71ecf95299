"""The load generator: ``wrk`` in its own process, and a parser for its text report.

wrk rather than a Python client because a Python load generator would need about as much CPU per
request as the proxy it measures; wrk's single C thread drives 50k+ req/s from one core, so the
numbers describe the proxy, not the client.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something this parser does not understand."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: throughput, median and p99 latency in ms, and every kind of failure."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.requests > 0


def parse_wrk(text: str) -> LoadResult:
    """Read wrk's ``--latency`` report; missing percentiles mean the format changed: fail loudly."""
    rps = _RPS.search(text)
    latencies = {m.group(1): float(m.group(2)) * _UNITS_MS[m.group(3)]
                 for m in _LATENCY.finditer(text)}
    if rps is None or set(latencies) != {"50", "99"}:
        raise WrkError(f"cannot parse wrk output:\n{text}")
    total = _TOTAL.search(text)
    socket_errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return LoadResult(
        rps=float(rps.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkError("wrk is not installed (Debian: apt-get install -y wrk)")
    return binary


def run_wrk(url: str, connections: int, seconds: float, threads: int = 1) -> LoadResult:
    """Run wrk against one URL; ``threads`` stays 1 so wrk takes one core of the two we have."""
    argv = [wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)
