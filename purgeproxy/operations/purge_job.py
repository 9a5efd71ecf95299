"""``$purge`` as a stored job: the asynchronous twin of :func:`purgeproxy.operations.purge.handle`.

The job's payload is the request the handler already validated, so the runner only rebuilds it,
runs the same engine with the same settings and upstream limit, audits, and answers with the
same OperationOutcome. Re-running it after a crash is safe: the engine resolves what is left, and
the answer counts what earlier attempts removed too. Refusals and upstream failures raised here
(the confirmation rail on the job's own plan, an unreachable upstream) become the job's result in
the worker, converted exactly as the synchronous path's error middleware converts them.
"""

from __future__ import annotations

from aiohttp import web

from purgeproxy import metrics
from purgeproxy.app_keys import JOB_STORE, PROFILE
from purgeproxy.engine.cohort import child_details
from purgeproxy.engine.purge import PurgeRequest
from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.engine.report import result_outcome
from purgeproxy.jobs import fanout
from purgeproxy.jobs.store import COMPLETED, ERROR, Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome
from purgeproxy.operations.purge import audit_result, engine_of
from purgeproxy.security.authorizer import Caller


async def cohort_of(app: web.Application, job: Job) -> frozenset[str]:
    """A fan-out child's cohort: every patient its parent recorded at kick-off (the Group is not
    read again). A parent that cannot be found gives none: shared resources are then kept."""
    if job.parent is None:
        return frozenset()
    parent = await app[JOB_STORE].get(job.parent)
    patients = parent.payload.get(fanout.PATIENTS) if parent is not None else None
    return frozenset(patients) if isinstance(patients, list) else frozenset()


async def run(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    request = PurgeRequest.from_json(job.payload["request"], await cohort_of(app, job))
    ERASURE_REASON.set(job.payload.get("reason"))
    profile = await app[PROFILE].get()
    engine = engine_of(app, profile)
    with metrics.timed_operation("$purge"):
        result = await engine.run(request, checkpoint)
    result.removed_earlier = checkpoint.earlier
    await audit_result(app, Caller(job.payload["caller"]), result, job.payload.get("reason"))
    done = result.complete or request.dry_run
    status = result.interruption.status if result.interruption else 200
    details = child_details(result) if request.cohort else None
    return JobOutcome(COMPLETED if done else ERROR, status, result_outcome(result), details)
