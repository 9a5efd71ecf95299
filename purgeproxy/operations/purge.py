"""``Patient/[id]/$purge`` (R6, Aidbox's shape): the HTTP side of the purge engine."""

from __future__ import annotations

from aiohttp import web

from purgeproxy import metrics
from purgeproxy.app_keys import (
    CALLER_LIMITS,
    CONFIG,
    FHIR_CLIENT,
    HARD_DELETE_LIMIT,
    JOB_STORE,
    PROFILE,
    UPSTREAM_LIMIT,
)
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.config import Config
from purgeproxy.engine.context import require_hard_delete_possible
from purgeproxy.engine.plan import Policy
from purgeproxy.engine.purge import PurgeEngine, PurgeRequest, PurgeSettings
from purgeproxy.engine.rail import check_confirmed
from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.engine.report import result_outcome
from purgeproxy.engine.result import Result
from purgeproxy.fhir.references import is_valid_id
from purgeproxy.jobs.store import Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome
from purgeproxy.operations.async_status import kick_off, wants_async
from purgeproxy.operations.common import body_fhir_version, bounded_body, caller_of
from purgeproxy.operations.params import BOOLEAN_PARAMETERS, BadRequest, compartment_from, parse_purge
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.receipts import stage
from purgeproxy.render import render
from purgeproxy.security.authorizer import Caller
from purgeproxy.servers.profile import UpstreamProfile


def settings_from(config: Config) -> PurgeSettings:
    purge = config.purge
    policy = Policy(frozenset(purge.excluded_types), purge.shared == "delete")
    return PurgeSettings(policy, purge.batch_size, purge.page_size, purge.max_rounds, purge.hard_delete,
                         purge.max_without_confirm, purge.outside_references, purge.outside_references_members,
                         attachments=purge.attachments, observer=metrics.PHASES,
                         hard_delete_concurrency=purge.hard_delete_concurrency,
                         transaction_concurrency=purge.transaction_concurrency,
                         earlier_deleted_max_entries=purge.earlier_deleted_max_entries)


def engine_of(app: web.Application, profile: UpstreamProfile) -> PurgeEngine:
    """The purge engine as every entry point runs it: the app's client, its settings, and the
    process's bounds on upstream requests and on hard deletes, shared by every purge."""
    return PurgeEngine(app[FHIR_CLIENT], profile, settings_from(app[CONFIG]), app[UPSTREAM_LIMIT],
                       app[HARD_DELETE_LIMIT])


async def _validated(request: web.Request) -> tuple[Caller, PurgeRequest, UpstreamProfile, str | None]:
    """Everything checked that can be checked before the first upstream write."""
    patient_id = request.match_info["id"]
    if not is_valid_id(patient_id):
        raise BadRequest(400, "invalid", "the patient id does not match the FHIR id rule", "id")
    caller = await caller_of(request, "$purge", patient=patient_id)
    body = await bounded_body(request) if request.method == "POST" else b""
    given = parse_purge(request.query, body, request.content_type, await body_fhir_version(request, body))
    profile = await request.app[PROFILE].get()
    compartment = (compartment_from(given.compartment_definition, profile.definitions)
                   if given.compartment_definition is not None
                   else dict(profile.definitions.patient_compartment))
    require_hard_delete_possible(request.app[CONFIG].purge.hard_delete, profile.kind)
    return caller, PurgeRequest(patient_id, compartment, given.dry_run, given.confirm,
                                given.remove_references), profile, given.reason


async def audit_result(app: web.Application, caller: Caller, result: Result, reason: str | None = None) -> None:
    """Shared by the synchronous path and the asynchronous job runner: the receipt and the audit
    (``receipts.stage``, the stage every destructive operation's result passes)."""
    await stage.conclude(app, caller.name, result, reason)


async def handle(request: web.Request) -> web.Response:
    caller, purge_request, profile, reason = await _validated(request)
    ERASURE_REASON.set(reason)
    engine = engine_of(request.app, profile)
    if wants_async(request):
        with request.app[CALLER_LIMITS].hold(caller.name):
            await _rail_before_kick_off(engine, purge_request)
        payload = {"request": purge_request.to_json(), "caller": caller.name, "reason": reason}
        target = f"Patient/{purge_request.patient_id}" + (" (dry run)" if purge_request.dry_run else "")
        return await kick_off(request, "$purge", target, payload, f"The $purge of Patient/{purge_request.patient_id}")
    with request.app[CALLER_LIMITS].hold(caller.name, await request.app[JOB_STORE].active_jobs(caller.name)), \
            metrics.timed_operation("$purge"):
        result = await engine.run(purge_request)
    await audit_result(request.app, caller, result, reason)
    status = result.interruption.status if result.interruption else 200
    return render(request, result_outcome(result), status)


async def _rail_before_kick_off(engine: PurgeEngine, purge_request: PurgeRequest) -> None:
    """Refuse an asynchronous purge over ``purge.max_without_confirm`` before answering 202: the
    caller learns it now, with the count, rather than from a job that fails later. Only planned
    when the rail applies (no ``confirm=true``, not a dry run): large asynchronous purges carry
    ``confirm=true`` and start at once; the job checks the rail again on its own plan."""
    if engine.settings.max_without_confirm is None or purge_request.confirmed or purge_request.dry_run:
        return
    plan = await engine.plan(purge_request)
    check_confirmed(len(plan.order), engine.settings.max_without_confirm, purge_request.confirmed)


async def _run_job(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    """The stored-job twin of :func:`handle`; imported when a job runs, as ``purge_job`` builds
    on this module (its settings and audit)."""
    from purgeproxy.operations import purge_job

    return await purge_job.run(app, job, checkpoint)


PURGE = OperationUnit(
    "$purge", "$purge",
    (Route("POST", "/Patient/{id}/$purge", handle), Route("GET", "/Patient/{id}/$purge", handle)),
    dict.fromkeys(BOOLEAN_PARAMETERS, "boolean") | {"compartmentDefinition": "resource", "reason": "string"},
    AdvertisedOperation("purge", "http://hl7.org/fhir/build/OperationDefinition/Patient-purge", "Patient"),
    _run_job,
)
