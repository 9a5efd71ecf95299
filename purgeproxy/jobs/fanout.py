"""Fan-out jobs: a job about many patients runs as one child job per patient.

The parent job stores its children (deterministic ids, so a resumed parent finds the ones it
made), then waits for them; while it waits, its worker claims and runs its own children, so a
parent never waits on the workers it occupies, and the other workers of every replica claim the
rest like any job (each child has its own lease and checkpoint). A child's target is the
patient's, the one a single ``$purge`` uses: while another job purges that patient, the child
is not stored, and the parent stores it once that job ended, so no patient is purged twice at
once. Cancelling the parent cancels its children (``JobStore.cancel``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from purgeproxy.jobs.store import CANCELLED, COMPLETED, Job, JobStore
from purgeproxy.jobs.worker import Checkpoint

PATIENTS = "patients"  # the payload key that makes a job a fan-out parent
REASONS = 3  # problems quoted per incomplete patient; the child's own answer has all of them


@dataclass(frozen=True)
class ChildSpec:
    """One child as the parent stores it: what it runs, on what, with which validated request."""

    operation: str
    target: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Progress:
    patients: int
    patients_done: int
    done: int  # resources removed, over every child
    total: int  # resources planned as far as known

    @property
    def text(self) -> str:
        return (f"patients {self.patients_done} of {self.patients}, "
                f"resources {self.done:,} of {self.total:,}")


def is_parent(job: Job) -> bool:
    return isinstance(job.payload.get(PATIENTS), list)


def child_id(parent: str, index: int) -> str:
    return f"{parent}-{index:05d}"


def progress(parent: Job, children: list[Job]) -> Progress:
    """Measured from the children as the store has them now (finished ones count as done)."""
    done = sum(child.done for child in children)
    total = sum(child.total if child.total is not None else child.done for child in children)
    finished = sum(1 for child in children if not child.active)
    return Progress(len(parent.payload[PATIENTS]), finished, done, total)


async def run_children(store: JobStore, job: Job, checkpoint: Checkpoint,
                       specs: list[ChildSpec]) -> list[Job]:
    """Store the children not yet stored, help run them, and return them once all have ended.

    Raises the checkpoint's ``JobStopped`` when the parent was cancelled or lost its lease."""
    pool = checkpoint.pool
    poll = pool.settings.poll_seconds if pool is not None else 1.0
    while True:
        stored = {child.id: child for child in await store.children(job.id, answers=False)}
        for index, spec in enumerate(specs):
            cid = child_id(job.id, index)
            if cid not in stored:
                made = await store.submit_child(cid, job.id, spec.operation, spec.target, spec.payload)
                if made is not None:
                    stored[cid] = made
                    if pool is not None:
                        pool.notify()
        children = [stored[child_id(job.id, i)] for i in range(len(specs)) if child_id(job.id, i) in stored]
        now = progress(job, children)
        await checkpoint.totals(now.done, now.total)
        if len(children) == len(specs) and not any(child.active for child in children):
            answers = {child.id: child for child in await store.children(job.id)}
            return [answers[child.id] for child in children]
        claimed = (await store.claim_child(job.id, checkpoint.owner, checkpoint.lease)
                   if pool is not None else None)
        if claimed is not None and pool is not None:
            await pool.run_claimed(claimed, checkpoint.owner)
        elif pool is not None:
            await pool.until_a_job_ends(poll)  # a child ending here is seen at once, elsewhere at the poll
        else:
            await asyncio.sleep(poll)


def child_verdict(child: Job) -> tuple[bool, str]:
    """(purged completely, why not): read from the child's own answer, never assumed."""
    if child.status == CANCELLED:
        return False, f"cancelled after {child.done} resource(s) had been removed"
    result = child.result or {}
    issues = (result.get("outcome") or {}).get("issue") or [{}]
    first = issues[0]
    dry_run = bool(child.payload.get("request", {}).get("dry_run"))
    if child.status == COMPLETED and (first.get("code") == "success" or dry_run):
        return True, str(first.get("diagnostics", "purged"))
    problems = [str(i.get("diagnostics")) for i in issues[1:] if i.get("severity") in ("error", "warning")]
    shown = "; ".join(problems[:REASONS]) + (f"; and {len(problems) - REASONS} more" if len(problems) > REASONS else "")
    return False, (f"{first.get('diagnostics', f'the job ended as {child.status}')}"
                   + (f": {shown}" if shown else "") + f" (the whole answer: job {child.id})")
