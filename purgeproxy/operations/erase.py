"""Firely's ``$erase``: ``POST [base]/<Type>/<id>/$erase`` removes the resource and all its
versions; ``POST [base]/<Type>/<id>/_history/<vid>/$erase`` removes that version and all older ones.
An AuditEvent is never erased."""

from __future__ import annotations

from aiohttp import web

from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.engine.erase import erase_resource, erase_versions
from purgeproxy.engine.removal import Context
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import (
    answer,
    operation_input,
    resource_key,
    run,
    version_of,
)
from purgeproxy.security.authorizer import Caller

OPERATION = "$erase"
DEFINITION = "http://server.fire.ly/OperationDefinition/erase"
SPEC = {"dryRun": "boolean", "reason": "string"}


async def handle(request: web.Request) -> web.StreamResponse:
    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        key = resource_key(request, ctx)
        version = version_of(request) if "vid" in request.match_info else None
        dry_run = bool((await operation_input(request, SPEC)).get("dryRun"))
        if version is None:
            return await answer(request, caller, await erase_resource(ctx, key, dry_run, OPERATION))
        return await answer(request, caller, await erase_versions(ctx, key, version, dry_run, OPERATION))

    return await run(request, OPERATION, work)


ERASE = OperationUnit(
    OPERATION, OPERATION,
    (Route("POST", "/{type}/{id}/$erase", handle), Route("POST", "/{type}/{id}/_history/{vid}/$erase", handle)),
    SPEC,
    # Instance- and version-level on every type: listed once at system level rather than per type.
    AdvertisedOperation("erase", DEFINITION, None),
)
