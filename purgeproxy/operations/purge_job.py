"""``$purge`` as a stored job: the asynchronous twin of :func:`purgeproxy.operations.purge.handle`.

The job's payload is the request the handler already validated, so the runner only rebuilds it,
runs the same engine with the same settings and upstream limit, audits, and answers with the
same OperationOutcome. Re-running it after a crash is safe: the engine resolves what is left.
The confirmation rail (``purge.max_without_confirm``) needs the plan, so it is checked here, by
the engine, exactly as on the synchronous path, and its 422 becomes the job's result.
"""

from __future__ import annotations

import json

from aiohttp import web

from purgeproxy.app_keys import CONFIG, FHIR_CLIENT, PROFILE, UPSTREAM_LIMIT
from purgeproxy.auth import Caller
from purgeproxy.engine.purge import ConfirmationRequired, PurgeEngine, PurgeRequest
from purgeproxy.engine.report import purge_outcome
from purgeproxy.fhir.client import UpstreamError
from purgeproxy.fhir.outcome import error
from purgeproxy.jobs.store import COMPLETED, ERROR, Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome
from purgeproxy.operations.common import refuse
from purgeproxy.operations.purge import audit_result, settings_from


async def run(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    request = PurgeRequest.from_json(job.payload["request"])
    try:
        profile = await app[PROFILE].get()
        engine = PurgeEngine(app[FHIR_CLIENT], profile, settings_from(app[CONFIG]), app[UPSTREAM_LIMIT])
        result = await engine.run(request, checkpoint)
    except UpstreamError as failure:
        return JobOutcome(ERROR, failure.status, error(failure.code, failure.text))
    except ConfirmationRequired as refusal:
        answer = refuse(refusal)  # the very answer the synchronous path gives
        return JobOutcome(ERROR, answer.status, json.loads(answer.text or "{}"))
    await audit_result(app, Caller(job.payload["caller"]), result)
    done = result.complete or request.dry_run
    return JobOutcome(COMPLETED if done else ERROR, 200, purge_outcome(result))
