"""Scenario 1: pass-through overhead of purgeproxy against direct access, nginx and httpx.

All targets forward to the same fixed-latency upstream and are measured in the same run,
interleaved (repetition -> concurrency -> target, with the target order rotated each repetition),
so that a noisy neighbour slows every target alike instead of whichever ran last.

Beside throughput and latency, each target's CPU time per request (its process and children, from
/proc, over each wrk run): on a shared machine the neighbours move timings, much less the CPU a
request costs. ``--baseline REV`` adds purgeproxy as it was at a git revision, for A/B in one run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.nginx_ops import start_operations_only
from bench.report import Section, line_chart, table
from bench.targets import (
    Child,
    Processes,
    Target,
    cpu_seconds,
    free_port,
    preempted,
    purgeproxy_supports_workers,
    start_httpx,
    start_nginx,
    start_purgeproxy,
    start_upstream,
    wait_ready,
)

REPO = Path(__file__).resolve().parent.parent

# The targets (issue 14: 0.9x direct, p99 1.5x nginx's), checked at concurrency <= GATED_UP_TO.
MIN_THROUGHPUT_RATIO = 0.9
MAX_ADDED_MEDIAN_MS = 1.0
MAX_P99_VS_NGINX = 1.5
GATED_UP_TO = 64


@dataclass(frozen=True)
class Settings:
    concurrencies: tuple[int, ...] = (1, 20, 64, 200)
    seconds: float = 5.0
    reps: int = 2
    warmup_seconds: float = 1.0
    upstream_workers: int = 1
    workers: int = 2  # for the purgeproxy --workers row, once the CLI has the option
    baseline: str | None = None  # a git revision of purgeproxy to measure beside the working tree


@dataclass(frozen=True)
class Summary:
    """The median over repetitions of one target at one concurrency."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    @classmethod
    def of(cls, runs: list[LoadResult]) -> Summary:
        return cls(
            rps=statistics.median(r.rps for r in runs),
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs),
            errors=sum(r.errors for r in runs),
        )


Results = dict[tuple[str, int], list[LoadResult]]


@dataclass(frozen=True)
class Usage:
    """What a target's processes (itself and its workers) used so far, from /proc: CPU seconds,
    and the involuntary context switches of their main threads (see ``_body``)."""

    cpu: float = 0.0
    preempted: int = 0

    @classmethod
    def of(cls, child: Child) -> Usage:
        pids = [child.popen.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{child.popen.pid}/task/{child.popen.pid}/children").read_text().split()]
        except OSError:
            pass
        return cls(sum(cpu_seconds(pid) for pid in pids), sum(preempted(pid) for pid in pids))


@dataclass(frozen=True)
class PerRequest:
    """One run's use per request answered."""

    cpu_us: float
    preempted: float

    @classmethod
    def between(cls, before: Usage, after: Usage, requests: int) -> PerRequest:
        n = max(requests, 1)
        return cls((after.cpu - before.cpu) / n * 1e6, (after.preempted - before.preempted) / n)


UsePerRequest = dict[tuple[str, int], list[PerRequest]]  # per target and concurrency, per run


def start_purgeproxy_at(procs: Processes, upstream: Target, revision: str) -> Target:
    """purgeproxy as it was at a git revision (``git archive`` of its package), same config."""
    tree = procs.workdir / f"baseline-{revision}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "purgeproxy"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    port = free_port()
    config = procs.workdir / "purgeproxy-baseline.yaml"
    config.write_text(f"upstream: {{url: {upstream.base_url}}}\nserver: {{host: 127.0.0.1, port: {port}}}\n"
                      "logging: {level: warning}\n")
    # -P: the archived tree on PYTHONPATH comes before the current directory (the working tree)
    child = procs.start("purgeproxy-baseline", [sys.executable, "-P", "-m", "purgeproxy", "serve", "--config",
                                                str(config)], env={**os.environ, "PYTHONPATH": str(tree)})
    target = Target("baseline", f"purgeproxy at {revision} (log warning)", f"http://127.0.0.1:{port}/fhir", child)
    wait_ready(child, target.patient_url)
    return target


def start_targets(procs: Processes, settings: Settings) -> tuple[list[Target], list[str]]:
    """Every target at once (idle ones cost nothing) plus notes about the ones that are missing.

    To compare another variant, append one more ``Target`` here: tables and charts follow.
    """
    notes: list[str] = []
    upstream = start_upstream(procs, workers=settings.upstream_workers)
    targets = [
        upstream,
        start_purgeproxy(procs, upstream, "warning"),
        start_purgeproxy(procs, upstream, "info"),
    ]
    if settings.baseline:
        targets.append(start_purgeproxy_at(procs, upstream, settings.baseline))
    if purgeproxy_supports_workers():
        targets.append(start_purgeproxy(procs, upstream, "warning", workers=settings.workers))
    else:
        notes.append("purgeproxy `--workers`: not yet available in the CLI, so no multi-process row.")
    nginx = start_nginx(procs, upstream)
    if nginx is None:
        notes.append("nginx is not installed: no nginx row and no p99-vs-nginx check.")
    else:
        targets.append(nginx)
        operations_only = start_operations_only(procs, upstream, targets[1])
        if operations_only is not None:
            targets.append(operations_only)
    targets.append(start_httpx(procs, upstream))
    return targets, notes


def measure(targets: list[Target], settings: Settings, say: Callable[[str], None]) -> tuple[Results, UsePerRequest]:
    """Warm every target up, then the interleaved matrix of wrk runs."""
    for target in targets:
        run_wrk(target.patient_url, 20, settings.warmup_seconds)
    results: Results = {}
    use: UsePerRequest = {}
    for rep in range(settings.reps):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for connections in settings.concurrencies:
            for target in order:
                before = Usage.of(target.child)
                result = run_wrk(target.patient_url, connections, settings.seconds)
                per_request = PerRequest.between(before, Usage.of(target.child), result.requests)
                results.setdefault((target.key, connections), []).append(result)
                use.setdefault((target.key, connections), []).append(per_request)
                say(f"rep {rep + 1}/{settings.reps} c={connections:<3} {target.label:<30} "
                    f"{result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  CPU {per_request.cpu_us:5.0f} µs/req  "
                    f"preempted {per_request.preempted:4.2f}/req"
                    + (f"  {result.errors} errors" if result.errors else ""))
    return results, use


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def _row(target: Target, s: Summary, direct: Summary, nginx: Summary | None, gated: bool) -> list[str]:
    """One table row; the issue's three checks are marked on purgeproxy rows at gated concurrency."""
    ratio = s.rps / direct.rps if direct.rps else 0.0
    added = s.p50_ms - direct.p50_ms
    p99_vs = s.p99_ms / nginx.p99_ms if nginx and nginx.p99_ms else None
    check = gated and target.key.startswith("purgeproxy")
    cells = [
        f"{ratio:.3f}×" + (f" {_verdict(ratio >= MIN_THROUGHPUT_RATIO)}" if check else ""),
        f"{added:+.2f}" + (f" {_verdict(added <= MAX_ADDED_MEDIAN_MS)}" if check else ""),
        "—" if p99_vs is None else
        f"{p99_vs:.3f}×" + (f" {_verdict(p99_vs <= MAX_P99_VS_NGINX)}" if check else ""),
    ]
    if target.key == "direct":
        cells = ["1.00×", "0", cells[2]]
    errors = f" ({s.errors} errors)" if s.errors else ""
    return [target.label, f"{s.rps:,.0f}{errors}", f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}", *cells]


def _passes(s: Summary, direct: Summary, nginx: Summary | None) -> bool:
    return (
        s.rps >= MIN_THROUGHPUT_RATIO * direct.rps
        and s.p50_ms - direct.p50_ms <= MAX_ADDED_MEDIAN_MS
        and (nginx is None or s.p99_ms <= MAX_P99_VS_NGINX * nginx.p99_ms)
        and s.errors == 0
    )


def _summaries(targets: list[Target], results: Results, connections: int) -> dict[str, Summary]:
    return {t.key: Summary.of(results[(t.key, connections)]) for t in targets}


def _verdicts(targets: list[Target], results: Results, settings: Settings) -> list[tuple[Target, int, bool]]:
    """(purgeproxy target, concurrency, passes) at each gated concurrency."""
    gated = [c for c in settings.concurrencies if c <= GATED_UP_TO]
    found = []
    for target in (t for t in targets if t.key.startswith("purgeproxy")):
        for c in gated:
            s = _summaries(targets, results, c)
            found.append((target, c, _passes(s[target.key], s["direct"], s.get("nginx"))))
    return found


def _verdict_table(targets: list[Target], results: Results, settings: Settings) -> str:
    gated = [c for c in settings.concurrencies if c <= GATED_UP_TO]
    verdicts = _verdicts(targets, results, settings)
    rows = [[target.label, *(_verdict(ok) for t, _c, ok in verdicts if t is target)]
            for target in targets if target.key.startswith("purgeproxy")]
    return table(["target", *(f"c={c}" for c in gated)], rows)


def _say_verdicts(targets: list[Target], results: Results, settings: Settings,
                  say: Callable[[str], None]) -> None:
    """The issue's targets on the console, each with the two ratios it is judged on."""
    for target, c, ok in _verdicts(targets, results, settings):
        s = _summaries(targets, results, c)
        nginx = s.get("nginx")
        p99 = f"{s[target.key].p99_ms / nginx.p99_ms:.2f}x nginx" if nginx and nginx.p99_ms else "no nginx"
        say(f"{'PASS' if ok else 'FAIL'} c={c:<3} {target.label}: {s[target.key].rps / s['direct'].rps:.2f}x "
            f"direct throughput, p99 {p99}")
    for c in (c for c in settings.concurrencies if c > GATED_UP_TO):
        say(f"c={c} (reported, not gated): " + ", ".join(
            f"{t.label} {Summary.of(results[(t.key, c)]).rps:,.0f} req/s" for t in targets))


def _tables(targets: list[Target], results: Results, use: UsePerRequest, settings: Settings) -> str:
    parts = []
    header = ["target", "req/s", "median ms", "p99 ms", "throughput / direct",
              "added median ms", "p99 / nginx", "CPU µs/req", "preempted /req"]
    for connections in settings.concurrencies:
        s = _summaries(targets, results, connections)
        gated = connections <= GATED_UP_TO
        rows = [[*_row(t, s[t.key], s["direct"], s.get("nginx"), gated),
                 f"{statistics.median(u.cpu_us for u in use[(t.key, connections)]):,.0f}",
                 f"{statistics.median(u.preempted for u in use[(t.key, connections)]):.2f}"] for t in targets]
        parts += [f"### Concurrency {connections}", "", table(header, rows), ""]
    return "\n".join(parts)


def _raw_runs(targets: list[Target], results: Results, settings: Settings) -> str:
    rows = []
    for connections in settings.concurrencies:
        for target in targets:
            for i, r in enumerate(results[(target.key, connections)], 1):
                rows.append([str(connections), target.label, str(i), f"{r.rps:,.0f}",
                             f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors)])
    raw = table(["c", "target", "rep", "req/s", "median ms", "p99 ms", "errors"], rows)
    return f"<details><summary>Every run</summary>\n\n{raw}\n\n</details>"


def _charts(targets: list[Target], results: Results, settings: Settings, docs_dir: Path) -> list[Path]:
    xs = list(settings.concurrencies)
    rps = {t.label: (xs, [Summary.of(results[(t.key, c)]).rps for c in xs]) for t in targets}
    p99 = {t.label: (xs, [Summary.of(results[(t.key, c)]).p99_ms for c in xs]) for t in targets}
    return [
        line_chart(docs_dir / "benchmarks-throughput.png", "Pass-through throughput (10 ms upstream)",
                   "concurrent connections", "requests / s", rps, log_x=True),
        line_chart(docs_dir / "benchmarks-p99.png", "Pass-through p99 latency (10 ms upstream)",
                   "concurrent connections", "p99 latency, ms", p99, log_x=True),
    ]


def _body(targets: list[Target], results: Results, use: UsePerRequest, settings: Settings, notes: list[str],
          elapsed: float) -> str:
    return "\n".join([
        f"`GET /fhir/Patient/example` (1,144-byte `application/fhir+json` body) from a fake "
        f"upstream (`bench/upstream.py`) that answers after a 10 ms timer. Load: `wrk -t1 -c<C> "
        f"-d{settings.seconds:g}s --latency`, {settings.reps} repetition(s) interleaved across "
        f"targets (order rotated each repetition); each figure is the median over repetitions. Every process shares the same "
        f"{_cores()} cores (wrk, upstream, proxy), so absolute numbers are a floor.",
        "",
        f"Targets from the issue, checked at concurrency ≤ {GATED_UP_TO} on purgeproxy rows (higher "
        f"concurrency is reported, not gated): "
        f"throughput ≥ {MIN_THROUGHPUT_RATIO}× direct, added median ≤ {MAX_ADDED_MEDIAN_MS:g} ms, "
        f"p99 ≤ {MAX_P99_VS_NGINX}× nginx's (and no errors).",
        "",
        _verdict_table(targets, results, settings),
        "",
        *(f"- {note}" for note in notes),
        f"- Pass-through part took {elapsed:.0f} s.",
        "",
        "*CPU µs/req* is the target's processes' user + system CPU over the requests answered; "
        "*preempted /req* how many times per request the kernel took the CPU from their main "
        "threads while they could still run (involuntary context switches, /proc): the load "
        "generator, the upstream and the proxy share the cores, and a proxy preempted in the "
        "middle of a burst of requests holds all of them back.",
        "",
        _tables(targets, results, use, settings),
        _raw_runs(targets, results, settings),
    ])


def _load_note(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """Other processes on the machine skew every target, the proxy's most (it adds a process):
    the load average says how quiet the machine was."""
    return (f"Load average (1 min) {before[0]:.2f} before, {after[0]:.2f} after the pass-through runs "
            f"on {_cores()} cores.")


def _cores() -> int:
    return os.cpu_count() or 1


def run(procs: Processes, settings: Settings, docs_dir: Path, say: Callable[[str], None]) -> Section:
    """Start the targets, measure, stop them, and describe the outcome as a report section."""
    started = time.monotonic()
    targets, notes = start_targets(procs, settings)
    for note in notes:
        say(note)
    load_before = os.getloadavg()
    try:
        results, use = measure(targets, settings, say)
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - started
    notes.append(_load_note(load_before, os.getloadavg()))
    say(notes[-1])
    _say_verdicts(targets, results, settings, say)
    charts = _charts(targets, results, settings, docs_dir)
    return Section("Pass-through overhead", _body(targets, results, use, settings, notes, elapsed), charts)
