"""``Patient/[id]/$purge`` (R6, Aidbox's shape): the HTTP side of the purge engine."""

from __future__ import annotations

import json

from aiohttp import web

from purgeproxy import audit
from purgeproxy.access_log import outcome_response
from purgeproxy.app_keys import (
    CALLER_LIMITS,
    CONFIG,
    FHIR_CLIENT,
    PROFILE,
    UPSTREAM_LIMIT,
)
from purgeproxy.auth import Caller, Denied
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.config import Config
from purgeproxy.engine.plan import Policy
from purgeproxy.engine.purge import (
    ConfirmationRequired,
    PurgeEngine,
    PurgeRequest,
    PurgeResult,
    PurgeSettings,
)
from purgeproxy.engine.report import purge_outcome
from purgeproxy.fhir.client import UpstreamError
from purgeproxy.fhir.outcome import FHIR_JSON
from purgeproxy.fhir.references import is_valid_id
from purgeproxy.operations.async_status import kick_off, wants_async
from purgeproxy.operations.common import bounded_body, caller_of, refuse
from purgeproxy.operations.params import BadRequest, compartment_from, parse_purge
from purgeproxy.servers.profile import UpstreamProfile

ADVERTISED = AdvertisedOperation(
    "purge", "http://hl7.org/fhir/build/OperationDefinition/Patient-purge", "Patient"
)


def settings_from(config: Config) -> PurgeSettings:
    purge = config.purge
    policy = Policy(frozenset(purge.excluded_types), purge.shared == "delete")
    return PurgeSettings(policy, purge.batch_size, purge.page_size, purge.max_rounds, purge.hard_delete,
                         purge.max_without_confirm, purge.outside_references,
                         attachments=purge.attachments)


async def _validated(request: web.Request) -> tuple[Caller, PurgeRequest, UpstreamProfile]:
    """Everything checked that can be checked before the first upstream write."""
    patient_id = request.match_info["id"]
    if not is_valid_id(patient_id):
        raise BadRequest(400, "invalid", "the patient id does not match the FHIR id rule", "id")
    caller = await caller_of(request, "$purge")
    body = await bounded_body(request) if request.method == "POST" else b""
    given = parse_purge(request.query, body, request.content_type)
    profile = await request.app[PROFILE].get()
    compartment = (compartment_from(given.compartment_definition, profile.definitions)
                   if given.compartment_definition is not None
                   else dict(profile.definitions.patient_compartment))
    if request.app[CONFIG].purge.hard_delete == "require" and profile.kind.hard_delete_method is None:
        raise BadRequest(422, "not-supported", f"hard_delete is 'require' but this upstream "
                         f"({profile.kind.name}) offers no hard delete; nothing was deleted")
    return caller, PurgeRequest(patient_id, compartment, given.dry_run, given.confirm), profile


async def audit_result(app: web.Application, caller: Caller, result: PurgeResult) -> None:
    """Shared by the synchronous path and the asynchronous job runner."""
    counts = result.plan.counts() if result.request.dry_run else _deleted_counts(result)
    state = "dry-run" if result.request.dry_run else ("success" if result.complete else "incomplete")
    audit.record("$purge", result.request.patient_id, caller.name, state, counts, result.request.dry_run)
    if app[CONFIG].purge.audit_event and not result.request.dry_run:
        event = audit.audit_event("$purge", result.request.patient_id, caller.name, result.complete, counts)
        async with app[UPSTREAM_LIMIT]:
            await app[FHIR_CLIENT].request("POST", "AuditEvent", json=event)


def _deleted_counts(result: PurgeResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rtype, _ in result.deletion.deleted:
        counts[rtype] = counts.get(rtype, 0) + 1
    return counts


async def handle(request: web.Request) -> web.Response:
    try:
        caller, purge_request, profile = await _validated(request)
    except (BadRequest, Denied) as problem:
        return refuse(problem)
    except UpstreamError as failure:
        return outcome_response(failure.status, failure.code, failure.text)
    if wants_async(request):
        payload = {"request": purge_request.to_json(), "caller": caller.name}
        target = f"Patient/{purge_request.patient_id}" + (" (dry run)" if purge_request.dry_run else "")
        return await kick_off(request, "$purge", target, payload, f"The $purge of Patient/{purge_request.patient_id}")
    engine = PurgeEngine(request.app[FHIR_CLIENT], profile, settings_from(request.app[CONFIG]),
                         request.app[UPSTREAM_LIMIT])
    try:
        with request.app[CALLER_LIMITS].hold(caller.name):
            result = await engine.run(purge_request)
    except UpstreamError as failure:
        return outcome_response(failure.status, failure.code, failure.text)
    except (Denied, ConfirmationRequired) as refusal:
        return refuse(refusal)
    await audit_result(request.app, caller, result)
    return web.Response(text=json.dumps(purge_outcome(result)), content_type=FHIR_JSON)


def add_routes(app: web.Application, base: str) -> None:
    path = f"{base}/Patient/{{id}}/$purge"
    app.router.add_route("POST", path, handle)
    app.router.add_route("GET", path, handle)
