"""DELETE interception: HAPI's cascading delete and conditional delete-expunge.

``DELETE [base]/<Type>/<id>?_cascade=delete`` (or header ``X-Cascade: delete``) deletes the
resource and everything that references it; ``DELETE [base]/<Type>?<criteria>&_expunge=true`` is a
delete-expunge. These never reach the upstream unchanged: a DELETE carrying either marker that the
proxy does not carry out is refused. Every other DELETE passes through as it is.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlencode

from aiohttp import web

from purgeproxy.app_keys import CONFIG, PASSTHROUGH
from purgeproxy.classify import Operation
from purgeproxy.engine.cascade import cascade_delete
from purgeproxy.engine.delete_expunge import Criteria, delete_expunge, parse_criteria
from purgeproxy.engine.removal import Context, Refused
from purgeproxy.fhir.formats import FORMAT_PARAMETERS
from purgeproxy.operations.common import caller_of
from purgeproxy.operations.params import BadRequest, parse_query
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.operations.vendor import answer, check_type, resource_key, run, take_reason
from purgeproxy.security.authorizer import Caller

OPERATION = "cascade-delete"
PARAMETERS = {"_cascade": "string", "_expunge": "boolean", "_dryRun": "boolean", "_confirm": "boolean",
              "_reason": "string"}
CONTROL = frozenset(PARAMETERS)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise BadRequest(400, "invalid", f"{name} must be 'true' or 'false'", name)
    return value == "true"


def underscored(ctx: Context) -> Context:
    """Refusals on these DELETE forms name ``_confirm`` and ``_dryRun``: a plain ``confirm`` here
    would be taken as a search criterion."""
    return replace(ctx, confirm_param="_confirm", dry_run_param="_dryRun")


def wants_cascade(request: web.Request) -> bool:
    return "_cascade" in request.query or "X-Cascade" in request.headers


def _cascade_mode(request: web.Request) -> None:
    for value in request.query.getall("_cascade", []) + request.headers.getall("X-Cascade", []):
        if value != "delete":
            raise BadRequest(400, "invalid", "the only cascade mode is 'delete'", "_cascade")


def _destructive(request: web.Request) -> bool:
    """The routing rule decides (:mod:`purgeproxy.classify`); the pass-through refuses what it
    calls destructive but the proxy does not carry out, so the two can never disagree unsafely."""
    return isinstance(request.app[PASSTHROUGH].verdict(request), Operation)


async def instance(request: web.Request) -> web.StreamResponse:
    """``DELETE <Type>/<id>``: a cascade when asked for, otherwise the pass-through."""
    if not _destructive(request):
        return await request.app[PASSTHROUGH].handle(request)

    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        ctx = underscored(ctx)
        key = resource_key(request, ctx)
        if not wants_cascade(request):
            raise Refused(422, "not-supported", "_expunge=true applies to conditional deletes "
                          "(DELETE Type?criteria&_expunge=true); to remove one resource permanently "
                          "use POST Type/id/$erase or $expunge; nothing was deleted")
        _cascade_mode(request)
        parse_query(request.query, CONTROL)
        take_reason(request, request.query.get("_reason"), "_reason")
        hard = _flag(request, "_expunge")
        if hard:  # what is done is also an expunge: authorized as one too
            await caller_of(request, "$expunge")
            ctx.require_hard_delete_possible()
        rounds = request.app[CONFIG].cascade.max_rounds
        removal = await cascade_delete(ctx, key, rounds, _flag(request, "_dryRun"), hard,
                                       _flag(request, "_confirm"))
        return await answer(request, caller, removal)

    return await run(request, OPERATION, work)


async def conditional(request: web.Request) -> web.StreamResponse:
    """``DELETE <Type>?criteria``: delete-expunge with ``_expunge=true``, otherwise pass-through."""
    if not _destructive(request):
        return await request.app[PASSTHROUGH].handle(request)

    async def work(ctx: Context, caller: Caller) -> web.StreamResponse:
        ctx = underscored(ctx)
        rtype = request.match_info["type"]
        check_type(rtype, ctx)
        if wants_cascade(request):
            raise Refused(422, "not-supported", "cascading conditional deletes are not supported: "
                          "cascade one resource at a time (DELETE Type/id?_cascade=delete); nothing was deleted")
        if not _flag(request, "_expunge"):
            return await request.app[PASSTHROUGH].handle(request)  # _expunge=false: a plain delete
        _no_misspelt_control(request)
        take_reason(request, request.query.get("_reason"), "_reason")
        criteria = [(k, v) for k, v in request.query.items() if k not in CONTROL and k not in FORMAT_PARAMETERS]
        parsed = parse_criteria(_as_url(rtype, criteria), ctx.profile.definitions.resource_types)
        return await _delete_expunge(request, ctx, caller, [parsed], _flag(request, "_dryRun"),
                                     _flag(request, "_confirm"))

    return await run(request, "$delete-expunge", work)


def _no_misspelt_control(request: web.Request) -> None:
    """``confirm``/``dryRun`` (``$purge``'s spelling) here would become search criteria, so that the
    delete silently matches nothing: refuse and name the spelling that works."""
    for name in ("confirm", "dryRun"):
        if name in request.query:
            raise BadRequest(400, "invalid", f"'{name}' is not a control parameter of a conditional "
                             f"delete (it would be a search criterion); use _{name}=true", name)


def _as_url(rtype: str, criteria: list[tuple[str, str]]) -> str:
    return f"{rtype}?{urlencode(criteria)}" if criteria else rtype


async def _delete_expunge(request: web.Request, ctx: Context, caller: Caller, searches: list[Criteria],
                          dry_run: bool, confirmed: bool) -> web.StreamResponse:
    return await answer(request, caller, await delete_expunge(ctx, searches, dry_run, confirmed))


# ``DELETE <Type>`` (:func:`conditional`) is part of ``$delete-expunge``'s declaration.
CASCADE_DELETE = OperationUnit(OPERATION, OPERATION, (Route("DELETE", "/{type}/{id}", instance),), PARAMETERS)
