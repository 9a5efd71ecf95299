"""Fan-out jobs: a job about many patients runs as one child job per patient.

The parent job stores its children (deterministic ids, so a resumed parent finds the ones it
made), then waits for them; while it waits, its worker claims and runs its own children, so a
parent never waits on the workers it occupies, and the other workers of every replica claim the
rest like any job (each child has its own lease and checkpoint). A child's target is the
patient's, the one a single ``$purge`` uses: while another job purges that patient, the child
is not stored, and the parent stores it once that job ended, so no patient is purged twice at
once. Cancelling the parent cancels its children (``JobStore.cancel``).

Once every child ended, the parent may run a child once more (``retry``: a member's purge that
only other members' data kept from completing, now gone); that second child (``<id>-2``) is
the patient's answer, and the first one's removals still count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from purgeproxy.engine.cohort import shared_duplicates
from purgeproxy.jobs.store import CANCELLED, COMPLETED, ERROR, Job, JobStore
from purgeproxy.jobs.worker import Checkpoint

PATIENTS = "patients"  # the payload key that makes a job a fan-out parent
REASONS = 3  # problems quoted per incomplete patient; the child's own answer has all of them
RETRY = "-2"  # a child run once more after its siblings ended: the first child's id and this
# whether a child that ended incomplete is worth running once more (given its result's details)
Retry = Callable[[dict[str, Any]], Awaitable[bool]]


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


def _details(child: Job) -> dict[str, Any]:
    details = (child.result or {}).get("details")
    return details if isinstance(details, dict) else {}


def progress(parent: Job, children: list[Job]) -> Progress:
    """Measured from the children as the store has them now (finished ones count as done). A
    child run again counts what its first run removed (its planned rest is the second's); a
    resource that two members' purges both counted (shared only within the cohort: one deleted
    it, the other found it gone) counts once."""
    again = {child.id.removesuffix(RETRY) for child in children if child.id.endswith(RETRY)}
    twice = shared_duplicates([_details(child) for child in children])
    done = sum(child.done for child in children) - twice
    total = sum(child.done if child.id in again or child.total is None else child.total
                for child in children) - twice
    finished = sum(1 for child in children if not child.active and child.id not in again)
    return Progress(len(parent.payload[PATIENTS]), finished, done, total)


async def run_children(store: JobStore, job: Job, checkpoint: Checkpoint, specs: list[ChildSpec],
                       retry: Retry | None = None) -> list[Job]:
    """Store the children not yet stored, help run them, and return them once all have ended;
    then, with ``retry``, run once more each child that ended incomplete and is worth it (a
    resumed parent finds the second children it stored). Returns each patient's last child.

    Raises the checkpoint's ``JobStopped`` when the parent was cancelled or lost its lease."""
    firsts = {child_id(job.id, index): spec for index, spec in enumerate(specs)}
    ended = await _wait_for(store, job, checkpoint, firsts)
    if retry is None:
        return list(ended.values())
    stored = {child.id for child in await store.children(job.id, answers=False)}
    again = {}
    for cid, spec in firsts.items():
        first = ended[cid]
        if cid + RETRY in stored or (first.status == ERROR and await retry(_details(first))):
            again[cid + RETRY] = spec
    if again:
        ended.update(await _wait_for(store, job, checkpoint, again))
    return [ended.get(cid + RETRY, ended[cid]) for cid in firsts]


async def _wait_for(store: JobStore, job: Job, checkpoint: Checkpoint,
                    wanted: dict[str, ChildSpec]) -> dict[str, Job]:
    """Store the ``wanted`` children not yet stored, help run them, and return them once ended."""
    pool = checkpoint.pool
    poll = pool.settings.poll_seconds if pool is not None else 1.0
    while True:
        ending = pool.job_end() if pool is not None else None  # before the read: no lost wake-up
        # progress columns only while children run: a finished child's answer is ~60 KB, and
        # re-reading every answer at every poll made a 200-patient job quadratic
        stored = {child.id: child for child in await store.children(job.id, answers=False)}
        for cid, spec in wanted.items():
            if cid not in stored:
                carried = {**spec.payload, "request_id": job.payload.get("request_id")}  # its log lines too
                made = await store.submit_child(cid, job.id, spec.operation, spec.target, carried)
                if made is not None:
                    stored[cid] = made
                    if pool is not None:
                        pool.notify()
        now = progress(job, list(stored.values()))
        await checkpoint.totals(now.done, now.total)
        mine = [stored[cid] for cid in wanted if cid in stored]
        if len(mine) == len(wanted) and not any(child.active for child in mine):
            answers = {child.id: child for child in await store.children(job.id)}
            final = progress(job, list(answers.values()))  # with the answers: shared ones counted once
            await checkpoint.totals(final.done, final.total)
            return {cid: answers[cid] for cid in wanted}
        claimed = (await store.claim_child(job.id, checkpoint.owner, checkpoint.lease)
                   if pool is not None else None)
        if claimed is not None and pool is not None:
            await pool.run_claimed(claimed, checkpoint.owner)
        elif pool is not None:
            await pool.until_a_job_ends(poll, ending)  # a child ending here is seen at once, elsewhere at the poll
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
