"""What the vendor-shaped operations ($erase, $expunge, cascade, delete-expunge) share on the HTTP
side: authorization like ``$purge``, input parsing, the engine context, audit and the answer.

Every refusal is an OperationOutcome raised before the first upstream write; everything the
engine did is audited (a structured log line naming the target, never a query value).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

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
from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.engine.removal import Context, Result
from purgeproxy.engine.report import result_outcome
from purgeproxy.fhir.references import Key, is_valid_id
from purgeproxy.operations.common import body_fhir_version, bounded_body, caller_of
from purgeproxy.operations.params import BadRequest, checked_reason, parse_parameters, parse_query
from purgeproxy.receipts import stage
from purgeproxy.render import render
from purgeproxy.security.authorizer import Caller
from purgeproxy.servers.profile import UpstreamProfile

Work = Callable[[Context, Caller], Awaitable[web.StreamResponse]]
Spec = Mapping[str, str]  # parameter name -> "boolean" | "integer" | "string" | "strings"
REASON = web.RequestKey("reason", str)  # the caller's ``reason``, for the erasure receipt
_VALUE_KEYS = {"boolean": ("valueBoolean",), "integer": ("valueInteger", "valueUnsignedInt", "valuePositiveInt"),
               "string": ("valueString", "valueUri", "valueUrl"), "strings": ("valueString", "valueUri", "valueUrl")}


async def context_of(request: web.Request) -> Context:
    return await app_context(request.app)


async def app_context(app: web.Application) -> Context:
    """The engine context of this app's upstream and settings (also for re-applying erasures)."""
    return context_for(app, await app[PROFILE].get())


def context_for(app: web.Application, profile: UpstreamProfile) -> Context:
    """The vendor operations' context, with the process's bounds: their hard deletes count against
    ``purge.hard_delete_concurrency`` as every purge's do, not against ``purge.concurrency``."""
    config = app[CONFIG]
    return Context(app[FHIR_CLIENT], profile, app[UPSTREAM_LIMIT], config.purge.batch_size,
                   config.purge.page_size, config.purge.hard_delete, frozenset(config.purge.excluded_types),
                   config.purge.max_without_confirm, observer=metrics.PHASES, hard_limit=app[HARD_DELETE_LIMIT])


async def run(request: web.Request, operation: str, work: Work) -> web.StreamResponse:
    """Authorize as ``$purge`` does, then run ``work`` in one of the caller's concurrency slots.
    Refusals and upstream failures are raised through: ``purgeproxy.errors`` answers them."""
    caller = await caller_of(request, operation)
    with request.app[CALLER_LIMITS].hold(caller.name, await request.app[JOB_STORE].active_jobs(caller.name)), \
            metrics.timed_operation(operation):
        return await work(await context_of(request), caller)


async def answer(request: web.Request, caller: Caller, removal: Result,
                 body: Callable[[Result], dict[str, Any]] = result_outcome) -> web.Response:
    """Receipt and audit (``receipts.stage``, as for ``$purge``), then answer with ``body(removal)``
    (default: the OperationOutcome). The ``reason`` is what :func:`operation_input` found."""
    await stage.conclude(request.app, caller.name, removal, request.get(REASON))
    status = removal.interruption.status if removal.interruption else 200
    return render(request, body(removal), status)


def resource_key(request: web.Request, ctx: Context) -> Key:
    """The (type, id) of an instance-level URL, refused when either is not valid or the type is
    protected."""
    rtype, rid = request.match_info["type"], request.match_info.get("id", "")
    check_type(rtype, ctx)
    if not is_valid_id(rid):
        raise BadRequest(400, "invalid", "the resource id does not match the FHIR id rule", "id")
    return rtype, rid


def check_type(rtype: str, ctx: Context) -> None:
    """A destructive operation's target type: known to the FHIR version and not protected
    (``engine.context.refuse_protected``, which the engine applies again on its own paths)."""
    if rtype not in ctx.profile.definitions.resource_types:
        raise BadRequest(400, "invalid", f"'{rtype}' is not a resource type of this server's FHIR version")
    ctx.refuse_protected(rtype)


def version_of(request: web.Request) -> str:
    version = request.match_info["vid"]
    if not is_valid_id(version):
        raise BadRequest(400, "invalid", "the version id does not match the FHIR id rule", "vid")
    return version


async def operation_input(request: web.Request, spec: Spec) -> dict[str, Any]:
    """Query and ``Parameters`` body merged; unknown, repeated or mistyped parameters refused."""
    values: dict[str, Any] = {name: _from_text(name, text, spec[name])
                              for name, text in parse_query(request.query, frozenset(spec)).items()}
    body = await bounded_body(request) if request.method == "POST" else b""
    document = parse_parameters(body, request.content_type, await body_fhir_version(request, body))
    for index, parameter in enumerate((document or {}).get("parameter", [])):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name")
        if name not in spec:
            raise BadRequest(400, "not-supported", f"unknown parameter '{name}'", where)
        value = next((parameter[k] for k in _VALUE_KEYS[spec[name]] if k in parameter), None)
        if not _typed(value, spec[name]):
            raise BadRequest(400, "invalid", f"parameter '{name}' has the wrong type", where)
        _merge(values, name, value, spec[name], where)
    take_reason(request, values.get("reason"))
    return values


def take_reason(request: web.Request, value: Any, where: str = "reason") -> None:
    """The caller's ``reason``, checked, for the receipt and for the upstreams whose hard delete
    asks for one; set (or cleared) on every request: a kept-alive connection's task is reused."""
    if value is not None:
        request[REASON] = checked_reason(value, where)
    ERASURE_REASON.set(request.get(REASON))


def _from_text(name: str, text: str, kind: str) -> Any:
    if kind == "boolean":
        if text not in ("true", "false"):
            raise BadRequest(400, "invalid", f"{name} must be 'true' or 'false'", name)
        return text == "true"
    if kind == "integer":
        if not text.isdigit():
            raise BadRequest(400, "invalid", f"{name} must be a non-negative integer", name)
        return int(text)
    return [text] if kind == "strings" else text


def _typed(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, str) and bool(value)


def _merge(values: dict[str, Any], name: str, value: Any, kind: str, where: str) -> None:
    if kind == "strings":
        values.setdefault(name, []).append(value)
    elif name in values and values[name] != value:
        raise BadRequest(400, "invalid", f"{name} is given twice with different values", where)
    else:
        values[name] = value
