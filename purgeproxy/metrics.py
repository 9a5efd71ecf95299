"""Every Prometheus metric the proxy exports, and the small functions that record them.

One module owns every definition, so that the names, labels and their bounds are reviewed in one
place. Labels are small closed sets (HTTP method, status class, operation name, verdict, phase,
job status): never a patient id, a resource id, a path or a query value, which are patient data
and would also make the series unbounded.

Under ``purgeproxy serve --workers N`` every worker process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set up by the serve command before the workers start, see
:func:`prepare_multiprocess`), and ``/metrics`` on any worker answers the sum over all of them.
prometheus_client picks its storage when it is first imported, so the variable must be set before
that, which is why the serve command sets it in the parent and the workers are spawned.

The engine does not import this module: operations record their :class:`~purgeproxy.engine.result.Result`
(:func:`record_result`) and time the engine's stages through its observer (:class:`PhaseTimer`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from purgeproxy.engine.result import Result

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# the classic text format every Prometheus version reads (the client's newest, 1.0.0, is the same
# text for names like ours, but older scrapers do not know its version string)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

PASSTHROUGH_SECONDS = Histogram(
    "purgeproxy_passthrough_request_duration_seconds",
    "Pass-through requests (count) and their latency, by HTTP method and status class",
    ["method", "status_class"], buckets=_FAST)
UPSTREAM_ERRORS = Counter(
    "purgeproxy_upstream_errors_total",
    "Upstream calls that got no usable answer: timeout, or error (unreachable, broken answer); "
    "client is passthrough (clients' requests) or proxy (the proxy's own FHIR calls)",
    ["client", "kind"])
OPERATIONS = Counter(
    "purgeproxy_operations_total",
    "Destructive operations by name and verdict (success, incomplete, dry-run, refused)",
    ["operation", "verdict"])
DELETED = Counter(
    "purgeproxy_resources_deleted_total", "Resources deleted by destructive operations", ["operation"])
HARD_DELETED = Counter(
    "purgeproxy_resources_hard_deleted_total",
    "Resources whose history the upstream's hard delete removed", ["operation"])
OPERATION_SECONDS = Histogram(
    "purgeproxy_operation_duration_seconds",
    "Wall time of destructive operations (a purge, or one attempt of an asynchronous purge job)",
    ["operation"], buckets=_SLOW)
PHASE_SECONDS = Histogram(
    "purgeproxy_operation_phase_seconds",
    "Time in each stage of the engine (resolve, plan, outside, delete, expunge, verify)",
    ["phase"], buckets=_SLOW)
JOBS_QUEUED = Counter("purgeproxy_jobs_queued_total", "Asynchronous jobs stored", ["operation"])
JOBS_RUNNING = Gauge("purgeproxy_jobs_running", "Asynchronous jobs running in this process now",
                     ["operation"], multiprocess_mode="livesum")
JOBS_FINISHED = Counter(
    "purgeproxy_jobs_finished_total",
    "Job attempts ended, by status (completed, error, cancelled, released, lease-lost)",
    ["operation", "status"])
LEASES_TAKEN_OVER = Counter(
    "purgeproxy_job_leases_taken_over_total",
    "Jobs claimed again after an earlier attempt stopped without finishing (its process died and "
    "the lease expired, or it gave the lease back at shutdown)", ["operation"])

_request_children: dict[tuple[str, int], Histogram] = {}


def passthrough_answered(method: str, status: int, seconds: float, upstream_status: int | None) -> None:
    """One pass-through request answered (called by the access log, which times every request).

    Cheap on purpose: one dict lookup for the labelled child and one observation. A 502/504
    without an upstream status is the pass-through's own answer to an upstream failure."""
    key = (method, status // 100)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = PASSTHROUGH_SECONDS.labels(
            method if method in _METHODS else "other", f"{status // 100}xx")
    child.observe(seconds)
    if upstream_status is None and status in (502, 504):
        upstream_failed("passthrough", status == 504)


def upstream_failed(client: str, timeout: bool) -> None:
    UPSTREAM_ERRORS.labels(client, "timeout" if timeout else "error").inc()


def proxy_call_failed(status: int) -> None:
    """The proxy's own FHIR client (``FhirClient``) failed: 504 is a timeout, 502 any other."""
    upstream_failed("proxy", status == 504)


def record_result(result: Result) -> None:
    """What one destructive operation did, from its result (the one the audit line reports)."""
    verdict = "dry-run" if result.dry_run else ("success" if result.complete else "incomplete")
    OPERATIONS.labels(result.operation, verdict).inc()
    if not result.dry_run:
        DELETED.labels(result.operation).inc(len(result.deletion.deleted))
        HARD_DELETED.labels(result.operation).inc(len(result.deletion.hard_deleted))


def record_refusal(operation: str) -> None:
    OPERATIONS.labels(operation, "refused").inc()


@contextmanager
def timed_operation(operation: str) -> Iterator[None]:
    """Around one destructive operation (or one job attempt), failures included."""
    started = time.perf_counter()
    try:
        yield
    finally:
        OPERATION_SECONDS.labels(operation).observe(time.perf_counter() - started)


class PhaseTimer:
    """The engine's observer (``engine.observer.Observer``) that records each stage's time."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            PHASE_SECONDS.labels(name).observe(time.perf_counter() - started)


PHASES = PhaseTimer()


def job_queued(operation: str) -> None:
    JOBS_QUEUED.labels(operation).inc()


@contextmanager
def job_running(operation: str, attempt: int) -> Iterator[None]:
    """Around one attempt of a job; a later attempt means an earlier one's lease was taken over."""
    if attempt > 1:
        LEASES_TAKEN_OVER.labels(operation).inc()
    running = JOBS_RUNNING.labels(operation)
    running.inc()
    try:
        yield
    finally:
        running.dec()


def job_finished(operation: str, status: str) -> None:
    JOBS_FINISHED.labels(operation, status).inc()


def exposition() -> bytes:
    """The text ``/metrics`` answers: this process's metrics, or every worker's when the serve
    command runs several (multiprocess mode)."""
    if os.environ.get(MULTIPROC_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def prepare_multiprocess() -> Path | None:
    """Before the workers start: a directory for their samples, named in the environment they
    inherit. The operator's ``PROMETHEUS_MULTIPROC_DIR`` if set, emptied of an earlier run's
    sample files (they would be added to this run's); otherwise a new temporary directory, which
    is returned so that the caller removes it at the end."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # only prometheus_client's files, nothing else there
            stale.unlink()
        return None
    created = Path(tempfile.mkdtemp(prefix="purgeproxy-metrics-"))
    os.environ[MULTIPROC_DIR] = str(created)
    return created


def remove_multiprocess(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """A worker ended: its live gauges (jobs running) stop counting."""
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
