"""Microsoft's ``$bulk-delete``: ``DELETE [base]/$bulk-delete`` and ``DELETE [base]/[type]/$bulk-delete``
with search criteria, ``Prefer: respond-async`` (required, as Microsoft requires it). Status at
``[base]/_operations/bulk-delete/<id>`` (``async_status``). The request is validated in full
(``engine.bulk_delete``) before the job is stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from aiohttp import web

from purgeproxy.app_keys import CONFIG
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.engine import bulk_delete
from purgeproxy.engine.context import Refused
from purgeproxy.engine.report import result_outcome
from purgeproxy.jobs.store import COMPLETED, ERROR, Job
from purgeproxy.jobs.worker import Checkpoint, JobCancelled, JobOutcome
from purgeproxy.operations import async_status
from purgeproxy.operations.cohort import context_for
from purgeproxy.operations.common import caller_of
from purgeproxy.operations.params import BadRequest
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import check_type
from purgeproxy.receipts import stage

AUTHORIZED_AS = "$delete-expunge"


async def handle(request: web.Request) -> web.Response:
    caller = await caller_of(request, AUTHORIZED_AS)
    if not async_status.wants_async(request):
        raise BadRequest(400, "not-supported", "$bulk-delete runs as a job: send 'Prefer: respond-async'; "
                         "nothing was deleted")
    ctx = await context_for(request.app)
    rtype = request.match_info.get("type")
    if rtype is not None:
        check_type(rtype, ctx)
    config = request.app[CONFIG]
    planned = bulk_delete.plan(ctx.profile, rtype, list(request.query.items()), ctx.excluded_types,
                               config.expunge.allow_everything)
    if planned.hard and (config.purge.hard_delete == "never" or ctx.hard_method is None):
        raise Refused(422, "not-supported", f"_hardDelete=true, but this upstream ({ctx.profile.kind.name}) offers "
                      "no hard delete or purge.hard_delete is 'never'; nothing was deleted", expression="_hardDelete")
    payload = {"caller": caller.name, "authorized_as": AUTHORIZED_AS, "bulk_delete": planned.to_json()}
    digest = hashlib.sha256(json.dumps(planned.to_json(), sort_keys=True).encode()).hexdigest()[:32]
    return await async_status.kick_off(request, bulk_delete.OPERATION, f"{rtype or '[base]'} {digest}", payload,
                                       f"The $bulk-delete of {rtype or 'the server'}", status_path=async_status.MICROSOFT_STATUS)


async def run(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    planned = bulk_delete.BulkDelete.from_json(job.payload["bulk_delete"])
    ctx = await context_for(app)
    if not planned.hard:
        ctx = replace(ctx, hard_delete="never")  # Microsoft's default: a soft delete, history kept
    removal = bulk_delete.new_result(planned)
    try:
        result = await bulk_delete.run(ctx, planned, checkpoint, removal)
    except JobCancelled:  # Microsoft's 200 after a cancel still counts what was deleted, per type
        checkpoint.details = {"ResourceDeletedCount": bulk_delete.deleted_counts(removal)}
        raise
    result.removed_earlier = checkpoint.earlier
    await stage.conclude(app, job.payload["caller"], result, job.payload.get("reason"))
    status = result.interruption.status if result.interruption else 200
    return JobOutcome(COMPLETED if result.complete else ERROR, status, result_outcome(result),
                      {"ResourceDeletedCount": bulk_delete.deleted_counts(result)})


BULK_DELETE = OperationUnit(
    bulk_delete.OPERATION, AUTHORIZED_AS,
    (Route("DELETE", "/$bulk-delete", handle), Route("DELETE", "/{type}/$bulk-delete", handle)),
    dict.fromkeys(bulk_delete.FLAGS, "boolean") | {"excludedResourceTypes": "string"},
    AdvertisedOperation("bulk-delete", "http://azurehealthcareapis.com/OperationDefinition/bulk-delete", None),
    run,
)

