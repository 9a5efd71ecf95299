"""The job store interface: what every durable backend (SQLite, PostgreSQL) must offer.

A job is a destructive operation the proxy accepted with ``Prefer: respond-async``: its name and
its already validated request (``payload``, plain JSON), plus progress and the final answer. The
store is the only shared state between workers and replicas, so every state change is one
atomic conditional write: a worker owns a job only while its lease (``owner`` and
``lease_until``) is current, and every write it makes is conditioned on still holding it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

JobStatus = Literal["new", "processing", "completed", "error", "cancelled"]  # stored as these strings
FinalStatus = Literal["completed", "error", "cancelled"]  # what ``finish`` records

NEW: Final = "new"
PROCESSING: Final = "processing"
COMPLETED: Final = "completed"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
ACTIVE: Final[tuple[JobStatus, ...]] = (NEW, PROCESSING)  # a job in one of these still has work to do


@dataclass(frozen=True)
class Job:
    id: str
    operation: str  # e.g. "purge"
    target: str  # what it acts on ("purge:Patient/123"): one active job per target
    payload: dict[str, Any]
    status: JobStatus
    total: int | None  # resources in scope as far as known; None before the first plan
    done: int  # resources removed so far, over every attempt
    result: dict[str, Any] | None  # {"status": <http status>, "outcome": <OperationOutcome>}
    owner: str | None
    attempts: int
    updated_at: datetime
    created_at: datetime | None = None  # rows always have it; None only for jobs built by hand
    parent: str | None = None  # the fan-out job this per-patient child belongs to

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class Quota:
    """Bounds on the jobs a new one joins, counted in the store, so over every replica: jobs
    queued or running for ``caller`` (under ``per_caller``), and in all (under ``total``)."""

    caller: str
    per_caller: int
    total: int


class QuotaExceeded(Exception):
    """No job was stored: ``caller`` has ``per_caller`` active jobs, or the store ``total``."""

    def __init__(self, which: str, limit: int) -> None:
        super().__init__(which)
        self.which, self.limit = which, limit  # which: "caller" or "queue"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list shows; ``None`` leaves a field unfiltered. ``caller`` restricts the list
    to the jobs that caller submitted."""

    caller: str | None = None
    status: str | None = None
    operation: str | None = None
    since: datetime | None = None  # changed at or after this instant


def _instant(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)


def job_from_row(row: Mapping[str, Any]) -> Job:
    """One row of either backend as a Job; JSON columns may arrive as text or as objects."""
    return Job(
        id=row["id"], operation=row["operation"], target=row["target"], payload=_json(row["payload"]),
        status=row["status"], total=row["total"], done=row["done"], result=_json(row["result"]),
        owner=row["owner"], attempts=row["attempts"], updated_at=_instant(row["updated_at"]),
        created_at=_instant(row["created_at"]), parent=row["parent"],
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


class JobStore(ABC):
    """Durable jobs with leases; every method is safe to call from many processes at once."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def submit(self, job_id: str, operation: str, target: str, payload: dict[str, Any],
                     quota: Quota | None = None) -> tuple[Job, bool]:
        """Store a new job, or return the active job with the same target; True when created.
        With a ``quota``, a new job past it raises ``QuotaExceeded`` (an active job with the same
        target is still returned: asking again is not a second job)."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def active_jobs(self, caller: str) -> int:
        """Jobs of ``caller`` queued or running, on every replica."""

    @abstractmethod
    async def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Take the oldest active job whose lease is free or expired; at most one claimer wins."""

    @abstractmethod
    async def checkpoint(self, job_id: str, owner: str, lease_seconds: float,
                         progress: tuple[int, int] | None = None) -> bool:
        """Extend the lease (and record ``(done, total)``); False once the job is no longer ours
        to run: cancelled, or its lease expired and another worker took it."""

    @abstractmethod
    async def finish(self, job_id: str, owner: str, status: FinalStatus, result: dict[str, Any],
                     done: int | None = None) -> bool:
        """Record the final answer (and the final count, which includes the batch that was in
        flight when a cancel came); a cancelled job stays cancelled. False when not our job."""

    @abstractmethod
    async def release(self, job_id: str, owner: str) -> None:
        """Give the lease back at shutdown so that another worker resumes the job at once."""

    @abstractmethod
    async def cancel(self, job_id: str) -> Job | None:
        """Mark an active job and its active children cancelled; returns the job as it now is,
        None when unknown."""

    @abstractmethod
    async def submit_child(self, job_id: str, parent: str, operation: str, target: str,
                           payload: dict[str, Any]) -> Job | None:
        """Store ``parent``'s child ``job_id`` unless it exists (then return it as it is); None
        while another active job holds ``target``: the child is stored once that job ended."""

    @abstractmethod
    async def children(self, parent: str, answers: bool = True) -> list[Job]:
        """Every child of ``parent``, in the order they were stored; ``answers=False``: without
        payload and result (an empty payload, no result), for counting progress."""

    @abstractmethod
    async def claim_child(self, parent: str, owner: str, lease_seconds: float) -> Job | None:
        """``claim``, among ``parent``'s children only (the parent's worker helps its children)."""


    @abstractmethod
    async def list_jobs(self, where: JobFilter, limit: int, offset: int = 0) -> list[Job]:
        """Jobs matching ``where``, newest first, ``limit`` of them after skipping ``offset``."""

    @abstractmethod
    async def remove_finished(self, older_than_seconds: float) -> int:
        """Delete finished jobs unchanged for longer than this; active jobs are never removed.
        Returns how many went."""
