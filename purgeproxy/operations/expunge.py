"""``$expunge`` in Medplum's and HAPI's shapes, at every level.

* ``[base]/<Type>/<id>/$expunge`` without HAPI parameters (Medplum): the resource and its history.
* ``[base]/Patient/<id>/$expunge?everything=true`` (Medplum): the patient's compartment, as an
  asynchronous ``$purge`` job (202 and a status URL, as Medplum answers).
* With HAPI's parameters (``expungeDeletedResources``, ``expungePreviousVersions``, ``limit``) at
  instance level: only history; at version, type and system level: the upstream's own ``$expunge``
  where it has one, refused with ``not-supported`` elsewhere. HAPI's ``Parameters.count`` answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from purgeproxy.app_keys import CONFIG
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.engine.erase import (
    erase_resource,
    expunge_instance_history,
    expunge_version,
)
from purgeproxy.engine.expunge import expunge_bulk
from purgeproxy.engine.purge import PurgeRequest
from purgeproxy.engine.removal import Context, Refused
from purgeproxy.engine.report import expunge_parameters
from purgeproxy.operations.async_status import kick_off
from purgeproxy.operations.common import caller_of
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import (
    answer,
    check_type,
    operation_input,
    resource_key,
    run,
    version_of,
)
from purgeproxy.security.authorizer import Caller
from purgeproxy.servers.expunge import ExpungeOptions

OPERATION = "$expunge"
SPEC = {"dryRun": "boolean", "everything": "boolean", "limit": "integer",
        "expungeDeletedResources": "boolean", "expungePreviousVersions": "boolean",
        "expungeEverything": "boolean", "reason": "string"}
_HAPI = ("limit", "expungeDeletedResources", "expungePreviousVersions", "expungeEverything")


def options_from(values: dict[str, Any]) -> ExpungeOptions:
    return ExpungeOptions(values.get("limit"), bool(values.get("expungeDeletedResources")),
                          bool(values.get("expungePreviousVersions")), bool(values.get("expungeEverything")),
                          given=any(name in values for name in _HAPI))


async def instance(request: web.Request) -> web.StreamResponse:
    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        key = resource_key(request, ctx)
        values = await operation_input(request, SPEC)
        dry_run, options = bool(values.get("dryRun")), options_from(values)
        if values.get("everything"):
            return await _everything(request, ctx, caller, key, dry_run, options)
        if options.everything:
            raise Refused(400, "invalid", "expungeEverything is only valid at system level")
        if not options.given:  # Medplum's shape: the resource and all its history
            return await answer(request, caller, await erase_resource(ctx, key, dry_run, OPERATION))
        removal = await expunge_instance_history(ctx, key, options, dry_run)
        return await answer(request, caller, removal, expunge_parameters)

    return await run(request, OPERATION, work)


async def _everything(request: web.Request, ctx: Context, caller: Caller, key: tuple[str, str],
                      dry_run: bool, options: ExpungeOptions) -> web.StreamResponse:
    """Medplum's ``everything=true``: asynchronous as on Medplum, a ``$purge`` job of the Patient
    compartment (same engine, same job store, same status URL and answer). What is done is a
    purge, so the caller needs ``$purge`` as well as ``$expunge``: a name is not a privilege, and
    the job's status URL (authorized as ``$purge``) stays readable by whoever created it."""
    await caller_of(request, "$purge")
    if key[0] != "Patient":
        raise Refused(422, "not-supported", f"everything=true is supported for the Patient compartment "
                      f"only, not {key[0]}; nothing was deleted")
    if options.given:
        raise Refused(400, "invalid", "everything=true cannot be combined with HAPI's expunge parameters")
    ctx.require_hard_delete_possible()
    purge = PurgeRequest(key[1], dict(ctx.profile.definitions.patient_compartment), dry_run)
    payload = {"request": purge.to_json(), "caller": caller.name}
    target = f"Patient/{key[1]}" + (" (dry run)" if dry_run else "")
    return await kick_off(request, "$purge", target, payload, f"The $expunge everything of Patient/{key[1]}")


async def version(request: web.Request) -> web.StreamResponse:
    """``<Type>/<id>/_history/<vid>/$expunge``: that one (non-current) version, as on HAPI."""
    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        key = resource_key(request, ctx)
        vid = version_of(request)
        values = await operation_input(request, {n: SPEC[n] for n in ("dryRun", "reason", *_HAPI[1:3])})
        removal = await expunge_version(ctx, key, vid, bool(values.get("dryRun")))
        return await answer(request, caller, removal, expunge_parameters)

    return await run(request, OPERATION, work)


async def bulk(request: web.Request) -> web.StreamResponse:
    """``<Type>/$expunge`` and ``[base]/$expunge``: the upstream's own, or refused."""
    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        rtype = request.match_info.get("type")
        if rtype is not None:
            check_type(rtype, ctx)
        values = await operation_input(request, {n: SPEC[n] for n in ("dryRun", "reason", *_HAPI)})
        allow = request.app[CONFIG].expunge.allow_everything
        removal = await expunge_bulk(ctx, rtype, options_from(values), bool(values.get("dryRun")), allow)
        return await answer(request, caller, removal, expunge_parameters)

    return await run(request, OPERATION, work)


EXPUNGE = OperationUnit(
    OPERATION, OPERATION,
    (Route("POST", "/$expunge", bulk), Route("POST", "/{type}/$expunge", bulk),
     Route("POST", "/{type}/{id}/$expunge", instance),
     Route("POST", "/{type}/{id}/_history/{vid}/$expunge", version)),
    SPEC,
    AdvertisedOperation("expunge", "http://hapifhir.io/fhir/OperationDefinition/expunge", None),
)
