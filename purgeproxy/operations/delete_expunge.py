"""HAPI's ``POST [base]/$delete-expunge`` with one or more ``url`` parameters (``Type?criteria``).

Carried out by the proxy, synchronously: every match found with a strict search, refused when
over-broad unless ``confirm=true``, deleted in transactions, expunged, verified. The conditional
``DELETE Type?criteria&_expunge=true`` form lives with the DELETE interception (``cascade.py``).
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from purgeproxy.app_keys import CONFIG
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.engine.delete_expunge import delete_expunge, parse_criteria
from purgeproxy.engine.removal import Context
from purgeproxy.operations import cascade
from purgeproxy.operations.params import BadRequest
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import answer, check_type, operation_input, run
from purgeproxy.security.authorizer import Caller

OPERATION = "$delete-expunge"
SPEC = {"url": "strings", "batchSize": "integer", "dryRun": "boolean", "confirm": "boolean", "reason": "string"}


async def handle(request: web.Request) -> web.StreamResponse:
    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        values = await operation_input(request, SPEC)
        urls = values.get("url") or []
        if not urls:
            raise BadRequest(400, "required", "at least one url parameter (Type?criteria) is required", "url")
        searches = [parse_criteria(url, ctx.profile.definitions.resource_types) for url in urls]
        for search in searches:
            check_type(search.rtype, ctx)
        config = request.app[CONFIG]
        if values.get("batchSize"):
            ctx = replace(ctx, batch_size=min(values["batchSize"], config.purge.batch_size))
        removal = await delete_expunge(ctx, searches, bool(values.get("dryRun")), bool(values.get("confirm")))
        return await answer(request, caller, removal)

    return await run(request, OPERATION, work)


# The conditional ``DELETE Type?criteria&_expunge=true`` is authorized and carried out as this
# operation too; its handler lives with the DELETE interception.
DELETE_EXPUNGE = OperationUnit(
    OPERATION, OPERATION,
    (Route("POST", "/$delete-expunge", handle), Route("DELETE", "/{type}", cascade.conditional)),
    SPEC,
    AdvertisedOperation("delete-expunge", "http://hapifhir.io/fhir/OperationDefinition/delete-expunge", None),
)
