"""Many patients in one request: R6 ``Group/[id]/$purge`` and Kodjin's ``POST Patient/$bulk-purge``
(repeated ``patientId``). Both are asynchronous jobs (``Prefer: respond-async``) that fan out into
one ordinary ``$purge`` job per patient (``jobs.fanout``); the handlers only decide the cohort
and refuse what must be refused before anything is stored. Status: ``[base]/$async/<id>``
(``X-Progress: patients 12 of 40, resources 8,112 of 25,030``) and Kodjin's
``[base]/patient-purge/<id>`` with the counts summed over the patients.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from purgeproxy.app_keys import CONFIG, FHIR_CLIENT, JOB_STORE, PROFILE, UPSTREAM_LIMIT
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.engine.cohort import (
    Cohort,
    check_size,
    cohort_outcome,
    distinct_patients,
    read_group,
    remove_group,
    worth_retrying,
)
from purgeproxy.engine.context import Context
from purgeproxy.engine.purge import PurgeRequest
from purgeproxy.fhir.references import is_valid_id
from purgeproxy.jobs.fanout import PATIENTS, ChildSpec, child_verdict, run_children
from purgeproxy.jobs.store import COMPLETED, ERROR, Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome
from purgeproxy.operations.async_status import KODJIN_STATUS, kick_off, wants_async
from purgeproxy.operations.common import bounded_body, caller_of
from purgeproxy.operations.params import BOOLEAN_PARAMETERS, BadRequest, compartment_from, parse_purge
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import operation_input
from purgeproxy.receipts import stage
from purgeproxy.security.authorizer import Caller

GROUP = "Group $purge"
BULK = "$bulk-purge"
BULK_SPEC = {"patientId": "strings", "confirm": "boolean", "dryRun": "boolean", "_remove-references": "boolean"}


async def context_for(app: web.Application) -> Context:
    """The shared stages' context, as ``vendor.context_of`` builds it, from the app alone (jobs)."""
    config = app[CONFIG]
    return Context(app[FHIR_CLIENT], await app[PROFILE].get(), app[UPSTREAM_LIMIT], config.purge.batch_size,
                   config.purge.page_size, config.purge.hard_delete, frozenset(config.purge.excluded_types),
                   config.purge.max_without_confirm)


def _require_async(request: web.Request, shape: str) -> None:
    if not wants_async(request):
        raise BadRequest(400, "not-supported", f"{shape} runs as a job: send 'Prefer: respond-async'; "
                         "nothing was deleted")


async def handle_group(request: web.Request) -> web.Response:
    group_id = request.match_info["id"]
    if not is_valid_id(group_id):
        raise BadRequest(400, "invalid", "the Group id does not match the FHIR id rule", "id")
    caller = await caller_of(request, "$purge")
    _require_async(request, "Group $purge")
    body = await bounded_body(request) if request.method == "POST" else b""
    given = parse_purge(request.query, body, request.content_type)
    ctx = await _context(request)
    # the whole request is validated before the Group is read: a bad definition is the caller's 400
    template = _template(ctx, given.compartment_definition, given.dry_run, given.confirm, given.remove_references)
    cohort = await read_group(ctx, group_id)
    check_size(len(cohort.patients), request.app[CONFIG].purge.max_patients_without_confirm,
               given.confirm or given.dry_run, f"Group/{group_id}")
    target = f"Group/{group_id}" + (" (dry run)" if given.dry_run else "")
    return await kick_off(request, GROUP, target, _payload(caller, cohort, template),
                          f"The $purge of Group/{group_id} ({len(cohort.patients)} patients)")


async def handle_bulk(request: web.Request) -> web.Response:
    caller = await caller_of(request, "$purge")
    _require_async(request, "Patient/$bulk-purge")
    values = await operation_input(request, BULK_SPEC)
    patients = distinct_patients(values.get("patientId") or [])
    confirmed, dry_run = bool(values.get("confirm")), bool(values.get("dryRun"))
    check_size(len(patients), request.app[CONFIG].purge.max_patients_without_confirm,
               confirmed or dry_run, "Patient/$bulk-purge")
    ctx = await _context(request)
    template = _template(ctx, None, dry_run, confirmed, bool(values.get("_remove-references")))
    digest = hashlib.sha256("\n".join(sorted(patients)).encode()).hexdigest()[:32]
    target = f"patients {digest}" + (" (dry run)" if dry_run else "")
    return await kick_off(request, BULK, target, _payload(caller, Cohort(patients), template),
                          f"The purge of {len(patients)} patients", status_path=KODJIN_STATUS)


async def _context(request: web.Request) -> Context:
    ctx = await context_for(request.app)
    ctx.require_hard_delete_possible()
    return ctx


def _template(ctx: Context, definition: dict[str, Any] | None, dry_run: bool, confirmed: bool,
              remove_references: bool) -> PurgeRequest:
    """Every patient's purge request but the id: validated once, for the whole cohort."""
    definitions = ctx.profile.definitions
    compartment = (compartment_from(definition, definitions) if definition is not None
                   else dict(definitions.patient_compartment))
    return PurgeRequest("", compartment, dry_run, confirmed, remove_references)


def _payload(caller: Caller, cohort: Cohort, template: PurgeRequest) -> dict[str, Any]:
    return {"caller": caller.name, "authorized_as": "$purge", "request": template.to_json(), **cohort.to_json()}


def _children(job: Job) -> list[ChildSpec]:
    """One ordinary ``$purge`` job per patient, with the target a single ``$purge`` uses."""
    template = job.payload["request"]
    suffix = " (dry run)" if template["dry_run"] else ""
    return [ChildSpec("$purge", f"$purge Patient/{pid}{suffix}",
                      {"request": {**template, "patient_id": pid}, "caller": job.payload["caller"]})
            for pid in job.payload[PATIENTS]]


async def run(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    """The Group (as read at kick-off), then every patient purged by its own child job (each
    knowing the cohort: what is shared only among its patients goes), and once more each child
    that only other members' data, gone by then, kept from completing. Running it again (a
    resumed job) is safe: a Group already gone is found gone, stored children are kept."""
    cohort = Cohort.from_json(job.payload)
    dry_run = bool(job.payload["request"]["dry_run"])
    ctx = await context_for(app)
    group = None
    if cohort.group and not dry_run:
        group = await remove_group(ctx, cohort.group, cohort.group_version)
        await stage.conclude(app, job.payload["caller"], group, job.payload.get("reason"))

    async def retry(details: dict[str, Any]) -> bool:
        return await worth_retrying(ctx, details)

    children = await run_children(app[JOB_STORE], job, checkpoint, _children(job), None if dry_run else retry)
    verdicts = [(pid, *child_verdict(child)) for pid, child in zip(cohort.patients, children, strict=True)]
    answer = cohort_outcome(cohort, verdicts, group, dry_run)
    done = answer["issue"][0]["code"] in ("success", "informational")
    return JobOutcome(COMPLETED if done else ERROR, 200, answer)


GROUP_PURGE = OperationUnit(
    GROUP, "$purge",
    (Route("POST", "/Group/{id}/$purge", handle_group), Route("GET", "/Group/{id}/$purge", handle_group)),
    dict.fromkeys(BOOLEAN_PARAMETERS, "boolean") | {"compartmentDefinition": "resource"},
    AdvertisedOperation("purge", "http://hl7.org/fhir/build/OperationDefinition/Group-purge", "Group"),
    run,
)
BULK_PURGE = OperationUnit(
    BULK, "$purge",
    (Route("POST", "/Patient/$bulk-purge", handle_bulk),),
    BULK_SPEC,
    AdvertisedOperation("bulk-purge", "https://kodjin.com/fhir/OperationDefinition/bulk-purge", "Patient"),
    run,
)
