"""The single-pass composition of the shared stages, for the operations other than the purge
($erase, $expunge, cascade, delete-expunge).

Each operation first proves a list of resources in scope (its scope finder), then hands it here:
ordered, confirmed (``engine.rail``), deleted in transaction Bundles with the purge's ``Deleter``
(409s resolved or reported, the scope never widens) with the upstream's own hard delete where it
has one, and verified by reading every resource and its history back (``engine.execute``). The
``Result`` says what was and was not removed.

Each operation passes the version it read every resource in and its own scope check: the
``Deleter`` deletes a resource only in that version, or, when it changed since, after the check
finds it still in scope (otherwise it is kept and reported as changed since planning).
"""

from __future__ import annotations

__all__ = ["Context", "Recheck", "Refused", "Result", "SearchResult", "history_left",
           "order_resources", "remove", "search_all", "still_readable", "versions_of"]

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from purgeproxy.engine import execute, verify
from purgeproxy.engine.compartment import Member
from purgeproxy.engine.context import Context, Refused, SearchResult, search_all
from purgeproxy.engine.deletion import DeletionReport, Recheck
from purgeproxy.engine.plan import delete_order
from purgeproxy.engine.rail import check_confirmed
from purgeproxy.engine.result import Result
from purgeproxy.fhir.client import UpstreamError
from purgeproxy.fhir.references import Key, all_references


def order_resources(resources: dict[Key, dict[str, Any]], base_url: str) -> list[Key]:
    """Referencing resources before the ones they reference, as the purge orders its deletes."""
    members = {key: Member(key, None, frozenset(), frozenset(), frozenset(all_references(body, base_url)) - {key})
               for key, body in resources.items()}
    return delete_order(members)


def versions_of(resources: Mapping[Key, dict[str, Any]]) -> dict[Key, str | None]:
    """The version each resource was read in (``meta.versionId``), for pinning its delete."""
    return {key: verify.version_of(body) for key, body in resources.items()}


async def remove(ctx: Context, removal: Result, order: list[Key], confirmed: bool = False,
                 versions: Mapping[Key, str | None] | None = None, recheck: Recheck | None = None,
                 progress: Callable[[int, int], Awaitable[None]] | None = None) -> Result:
    """Delete ``order`` (already proven in scope), hard-delete, then verify; fills ``removal``.

    ``versions``: the version each was examined in; ``recheck``: the operation's scope check for
    resources changed since (None: a changed resource is still in scope, e.g. one named by id).
    The confirmation rail is checked here, after planning and before the first delete, so that
    every operation has it and a dry run always shows the plan. ``progress(removed, planned)``
    hears of every batch (a stored job checkpoints, and stops there when cancelled)."""
    removal.planned = list(order)
    removal.hard_delete_method = ctx.hard_method
    if removal.dry_run or not order:
        return removal
    check_confirmed(len(order), ctx.max_without_confirm, confirmed, f"this {removal.operation}",
                    ctx.confirm_param, ctx.dry_run_param)
    removed = 0

    async def count(so_far: int) -> None:
        nonlocal removed
        removed = so_far
        if progress is not None:
            await progress(so_far, len(order))

    partial = DeletionReport()  # filled batch by batch
    try:
        removal.deletion = await execute.delete(ctx, execute.deleter(ctx, recheck), list(order), count, versions,
                                                partial)
        deletion = removal.deletion
        await execute.verify(ctx, removal, [k for k in order if k not in deletion.changed],
                             deletion.deleted + deletion.already_gone)
    except UpstreamError as failure:  # deletes were made: report them, never a bare 502
        execute.interrupted(removal, failure, max(removed, len(removal.deletion.deleted)))
        removal.errors.append(f"the upstream failed ({failure.text}) after at least {removal.removed_before_failure} "
                              f"of {len(order)} planned resource(s) were removed; what remains could not be verified")
    except BaseException:  # stopped by ``progress`` (a cancelled job): its caller sees what was deleted
        removal.deletion = partial
        raise
    return removal


async def still_readable(ctx: Context, keys: list[Key]) -> list[Key]:
    return await verify.still_readable(ctx.client, ctx.limit, keys)


async def history_left(ctx: Context, keys: list[Key]) -> list[Key]:
    return await verify.history_left(ctx.client, ctx.limit, keys)
