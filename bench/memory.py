"""Scenario 2: does a 1 GB body stream through purgeproxy in bounded memory?

The proxy's RSS is read from ``/proc/PID/status`` every 50 ms while a client process moves the
body, against a baseline taken after warm-up (so one-off allocations such as the first pool
connection do not count as growth). The issue's target: peak growth ≤ 50 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import run_wrk
from bench.report import Section, line_chart, table
from bench.targets import Processes, Target, rss_kb, start_purgeproxy, start_upstream

MAX_GROWTH_MB = 50.0
SAMPLE_SECONDS = 0.05
GIB = 1024 ** 3


@dataclass(frozen=True)
class Case:
    name: str
    argv_tail: list[str]  # after ``python -m bench.client``, with {base} and {size} filled in


CASES = (
    Case("download (GET /Binary/big)", ["download", "{base}/Binary/big?size={size}"]),
    Case("upload, Content-Length (POST /Binary)", ["upload", "{base}/Binary", "{size}"]),
    Case("upload, chunked (POST /Binary)", ["upload", "{base}/Binary", "{size}", "--chunked"]),
)


@dataclass
class Outcome:
    case: Case
    baseline_kb: int
    peak_kb: int
    hwm_before_kb: int
    hwm_after_kb: int
    status: int
    moved: int
    seconds: float
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.baseline_kb) * 1024 / 1e6

    @property
    def mb_per_s(self) -> float:
        return self.moved / self.seconds / 1e6 if self.seconds else 0.0


def _mb(kb: int) -> str:
    return f"{kb * 1024 / 1e6:.1f}"


def _warm_up(proxy: Target) -> None:
    """Exercise every code path once with small bodies, so the baseline includes their imports."""
    run_wrk(proxy.patient_url, 20, 1)
    for case in CASES:
        _client(case, proxy, 4 * 1024 * 1024)


def _client_argv(case: Case, proxy: Target, size: int) -> list[str]:
    tail = [part.format(base=proxy.base_url, size=size) for part in case.argv_tail]
    return [sys.executable, "-m", "bench.client", *tail]


def _client(case: Case, proxy: Target, size: int) -> dict[str, float]:
    done = subprocess.run(_client_argv(case, proxy, size), capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout)


def measure_case(case: Case, proxy: Target, size: int) -> Outcome:
    """Run one client process while sampling the proxy's RSS until the client exits."""
    pid = proxy.child.popen.pid
    baseline, hwm_before = rss_kb(pid)
    client = subprocess.Popen(_client_argv(case, proxy, size), stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        while client.poll() is None:
            samples.append((time.monotonic() - started, rss_kb(pid)[0]))
            time.sleep(SAMPLE_SECONDS)
        out, _ = client.communicate()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    result = json.loads(out)
    rss_after, hwm_after = rss_kb(pid)
    peak = max([rss for _, rss in samples] + [rss_after])
    return Outcome(case, baseline, peak, hwm_before, hwm_after, int(result["status"]),
                   int(result["bytes"]), float(result["seconds"]), samples)


def _body(outcomes: list[Outcome], size: int) -> str:
    rows = []
    for o in outcomes:
        ok = o.growth_mb <= MAX_GROWTH_MB and o.moved == size and o.status < 300
        rows.append([o.case.name, str(o.status), f"{o.moved:,}", f"{o.seconds:.1f}",
                     f"{o.mb_per_s:.0f}", _mb(o.baseline_kb), _mb(o.peak_kb),
                     f"{o.growth_mb:+.1f}", f"{_mb(o.hwm_before_kb)} → {_mb(o.hwm_after_kb)}",
                     "PASS" if ok else "**FAIL**"])
    header = ["transfer", "status", "bytes", "s", "MB/s", "RSS before MB", "RSS peak MB",
              "peak growth MB", "VmHWM MB", f"growth ≤ {MAX_GROWTH_MB:g} MB"]
    return "\n".join([
        f"{size:,} bytes ({size / GIB:g} GiB) through one purgeproxy process (log level warning) "
        f"to `bench/upstream.py`, which streams/counts bytes without delay. The client "
        f"(`bench/client.py`, stdlib `http.client`, 1 MiB pieces) runs in its own process. "
        f"RSS (`VmRSS`) sampled every {SAMPLE_SECONDS * 1000:.0f} ms; baseline after warm-up "
        f"with 4 MiB transfers; MB = 10^6 bytes.",
        "",
        table(header, rows),
    ])


def run(procs: Processes, size: int, docs_dir: Path, say: Callable[[str], None]) -> Section:
    upstream = start_upstream(procs)
    proxy = start_purgeproxy(procs, upstream, "warning")
    try:
        _warm_up(proxy)
        outcomes = []
        for case in CASES:
            outcome = measure_case(case, proxy, size)
            say(f"{case.name:<40} {outcome.mb_per_s:6.0f} MB/s  RSS {_mb(outcome.baseline_kb)} -> "
                f"peak {_mb(outcome.peak_kb)} MB ({outcome.growth_mb:+.1f})")
            outcomes.append(outcome)
    finally:
        procs.stop_all()
    series = {o.case.name: ([t for t, _ in o.samples], [kb * 1024 / 1e6 for _, kb in o.samples])
              for o in outcomes}
    baseline = min(o.baseline_kb for o in outcomes) * 1024 / 1e6
    budget = baseline + MAX_GROWTH_MB
    chart = line_chart(docs_dir / "benchmarks-memory.png", "purgeproxy RSS while streaming "
                       f"{size / GIB:g} GiB", "seconds", "RSS, MB", series,
                       ylim=(0, budget * 1.2), hline=(budget, f"baseline + {MAX_GROWTH_MB:g} MB"))
    return Section("Streaming memory", _body(outcomes, size), [chart])
