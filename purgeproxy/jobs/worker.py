"""The worker pool: claims stored jobs, runs them, checkpoints after every batch, hands them back.

Each worker loops: claim a job (lease), run its operation's runner, record the answer. While a job
runs, a heartbeat extends the lease every third of its length, and the runner's progress callback
(:class:`Checkpoint`) records progress after every batch. The checkpoint is also where a job
learns that it must stop: cancelled, taken over after its lease expired, or the process is
shutting down; it then stops after the batch in flight, which is what makes cancel and
shutdown safe. A killed process simply stops heart-beating: its leases expire and any worker,
here after a restart or on another replica, claims the job and re-runs the idempotent operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from purgeproxy import metrics
from purgeproxy.fhir.outcome import OutcomeError, error, issue, outcome
from purgeproxy.jobs.store import CANCELLED, ERROR, Job, JobStore
from purgeproxy.logs import get_logger

log = get_logger("purgeproxy.jobs")


class JobStopped(Exception):
    """The job must stop after the batch in flight; the subclass says why."""


class JobCancelled(JobStopped):
    pass


class LeaseLost(JobStopped):
    pass


class ShuttingDown(JobStopped):
    pass


@dataclass(frozen=True)
class JobOutcome:
    """What a runner answers: the job's final status and the synchronous path's HTTP answer."""

    status: Literal["completed", "error"]
    http_status: int
    outcome: dict[str, Any]
    details: dict[str, Any] | None = None  # what a vendor's status shape needs besides the outcome

    def as_result(self) -> dict[str, Any]:
        return {"status": self.http_status, "outcome": self.outcome,
                **({"details": self.details} if self.details is not None else {})}


@dataclass(frozen=True)
class WorkerSettings:
    size: int
    lease_seconds: float
    poll_seconds: float
    max_attempts: int
    retention_seconds: float = 30 * 86400.0  # finished jobs older than this are removed
    sweep_seconds: float = 3600.0  # how often this pool looks for them


class Checkpoint:
    """The progress callback for one claimed job; counts continue those of earlier attempts."""

    def __init__(self, store: JobStore, job: Job, owner: str, lease: float,
                 stopping: asyncio.Event, pool: WorkerPool | None = None) -> None:
        self.store, self.job, self.owner, self.lease, self.stopping = store, job, owner, lease, stopping
        self.earlier = job.done  # removed by attempts that died before finishing
        self.done = job.done
        self.pool = pool  # lets a fan-out job run its own children while it waits for them
        self.details: dict[str, Any] | None = None  # set by a runner that is stopped: JobOutcome.details so far

    async def totals(self, done: int, total: int) -> None:
        """Record counts that already cover every attempt (a fan-out job sums its children's)."""
        self.earlier = 0
        await self(done, total)

    async def __call__(self, done: int, total: int) -> None:
        self.done = self.earlier + done
        if not await self.store.checkpoint(self.job.id, self.owner, self.lease,
                                           (self.done, self.earlier + total)):
            raise await self._why_not_ours()
        if self.stopping.is_set():
            raise ShuttingDown()

    async def _why_not_ours(self) -> JobStopped:
        now = await self.store.get(self.job.id)
        return JobCancelled() if now is not None and now.status == CANCELLED else LeaseLost()


Runner = Callable[[Job, Checkpoint], Awaitable[JobOutcome]]


def cancelled_outcome(removed: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """``details``: what the runner had measured when it stopped (a vendor's status shape)."""
    return {"status": 200, "outcome": outcome(issue(
        "warning", "incomplete", f"The job was cancelled after {removed} resource(s) had been "
        "removed; what is left was not deleted")), **({"details": details} if details is not None else {})}


class WorkerPool:
    """``settings.size`` workers in this process, sharing one store and one wake-up signal."""

    def __init__(self, store: JobStore, runners: Mapping[str, Runner], settings: WorkerSettings) -> None:
        self.store, self.runners, self.settings = store, runners, settings
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wake = asyncio.Event()
        self._ended = asyncio.Event()  # set, then replaced, whenever a job run here ends
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop(f"{self.name}/{n}"), name=f"job-worker-{n}")
                      for n in range(self.settings.size)]
        if self.settings.size:  # a pool that runs no job (read-only) leaves the store alone
            self.tasks.append(asyncio.create_task(self._sweep(), name="job-retention"))

    def notify(self) -> None:
        """A job was just stored: look now rather than at the next poll."""
        self.wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; running jobs stop after their batch in flight and give their lease back."""
        self.stopping.set()
        self.wake.set()
        if not self.tasks:
            return
        _, late = await asyncio.wait(self.tasks, timeout=grace)
        for task in late:  # a batch that outlasts the grace: cancel it, the lease is released
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _loop(self, owner: str) -> None:
        while not self.stopping.is_set():
            try:
                job = await self.store.claim(owner, self.settings.lease_seconds)
            except Exception:  # the store is unreachable for now: keep polling
                log.exception("job_claim_failed", worker=owner)
                job = None
            if job is None:
                await self._idle()
                continue
            try:
                await self.run_claimed(job, owner)
            except Exception:  # e.g. the store went away while recording: the lease will expire
                log.exception("job_worker_error", job_id=job.id, worker=owner)

    async def _sweep(self) -> None:
        """Remove finished jobs past ``jobs.retention_days``, now and then every ``sweep_seconds``.
        Every replica may do it: the delete is one conditional statement, so they cannot clash."""
        while not self.stopping.is_set():
            try:
                removed = await self.store.remove_finished(self.settings.retention_seconds)
                if removed:
                    log.info("jobs_removed", removed=removed)
            except Exception:  # the store is unreachable for now: try at the next sweep
                log.exception("job_sweep_failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.sweep_seconds)

    async def _idle(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.settings.poll_seconds)
        self.wake.clear()

    async def run_claimed(self, job: Job, owner: str) -> None:
        """Run a job claimed for ``owner`` to its end, its log lines carrying the id of the request
        that created the job (sent upstream as ``X-Request-Id`` too) and the job's id."""
        try:
            with structlog.contextvars.bound_contextvars(request_id=job.payload.get("request_id"), job_id=job.id), \
                    metrics.job_running(job.operation, job.attempts):
                metrics.job_finished(job.operation, await self._attempt(job, owner))
        finally:
            ended, self._ended = self._ended, asyncio.Event()
            ended.set()

    def job_end(self) -> asyncio.Event:
        """Set when the next job run by this pool ends. Taken before reading the store and waited
        on after, a job that ends in between is not missed (that lost wake-up cost a fan-out
        parent a whole poll: a 3-patient bulk purge took 1.9 s where one by one took 0.7 s)."""
        return self._ended

    async def until_a_job_ends(self, timeout: float, ending: asyncio.Event | None = None) -> None:
        """Wait until a job run by this pool ends (since ``ending`` was taken), or ``timeout``: a
        fan-out parent waiting on its children sees one end here at once instead of at its next
        poll (which still notices those that end on another replica)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for((ending or self._ended).wait(), timeout)

    async def _attempt(self, job: Job, owner: str) -> str:
        """Run the job; how the attempt ended (the job's final status, or released / lease-lost).
        A fan-out job's worker runs its own children between polls: a parent never waits on the
        workers it occupies."""
        checkpoint = Checkpoint(self.store, job, owner, self.settings.lease_seconds, self.stopping, self)
        heart = asyncio.create_task(self._heartbeat(job, owner))
        log.info("job_started", job_id=job.id, operation=job.operation, attempt=job.attempts,
                 worker=owner, resumed_from=job.done)
        try:
            answer = await self._outcome(job, checkpoint)
            await self._finish(job, owner, answer, checkpoint.done)
            return answer.status
        except JobCancelled:
            await self.store.finish(job.id, owner, CANCELLED, cancelled_outcome(checkpoint.done, checkpoint.details),
                                    checkpoint.done)
            log.info("job_cancelled", job_id=job.id, removed=checkpoint.done)
            return CANCELLED
        except LeaseLost:
            log.warning("job_lease_lost", job_id=job.id, worker=owner)
            return "lease-lost"
        except (ShuttingDown, asyncio.CancelledError):
            await self.store.release(job.id, owner)
            log.info("job_released", job_id=job.id, removed=checkpoint.done)
            return "released"
        finally:
            heart.cancel()

    async def _outcome(self, job: Job, checkpoint: Checkpoint) -> JobOutcome:
        runner = self.runners.get(job.operation)
        if runner is None:
            return JobOutcome(ERROR, 500, error("not-supported", f"no runner for '{job.operation}'"))
        if job.attempts > self.settings.max_attempts:
            return JobOutcome(ERROR, 500, error("exception", f"the job was given up after "
                                                f"{self.settings.max_attempts} attempts"))
        try:
            return await runner(job, checkpoint)
        except JobStopped:
            raise
        except OutcomeError as failure:  # a refusal or upstream failure: answered as on the sync path
            log.info("job_refused", job_id=job.id, status=failure.status, code=failure.code)
            return JobOutcome(ERROR, failure.status, failure.document())
        except Exception:  # a bug or an unexpected answer: the job ends, the worker lives on
            log.exception("job_failed", job_id=job.id)
            return JobOutcome(ERROR, 500, error("exception", "the job failed unexpectedly; "
                                                "re-running it is safe"))

    async def _finish(self, job: Job, owner: str, result: JobOutcome, done: int) -> None:
        recorded = await self.store.finish(job.id, owner, result.status, result.as_result(), done)
        log.info("job_finished", job_id=job.id, status=result.status, recorded=recorded)

    async def _heartbeat(self, job: Job, owner: str) -> None:
        """Keep the lease while a long step (a compartment search) runs between checkpoints."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                if not await self.store.checkpoint(job.id, owner, self.settings.lease_seconds):
                    return  # cancelled or taken over: the next checkpoint stops the job
            except Exception:
                log.warning("job_heartbeat_failed", job_id=job.id)
