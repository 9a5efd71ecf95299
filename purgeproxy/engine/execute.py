"""The stages every destructive operation shares once its scope is proven: delete (the hard delete
is part of it), verify, and the accounting of an upstream that failed part way.

The purge runs them in rounds (``engine.purge``), the other operations once (``engine.removal``);
both fill the one ``Result``.
"""

from __future__ import annotations

import asyncio

from purgeproxy.engine import verify as read_back
from purgeproxy.engine.context import Context
from purgeproxy.engine.deletion import Deleter, DeletionReport, Progress, Recheck, References, Versions
from purgeproxy.engine.result import Result
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.fhir.references import Key


def deleter(ctx: Context, recheck: Recheck | None, hard_after: asyncio.Event | None = None) -> Deleter:
    """The deleter of this run: hard deletes when the context uses them, each batch's once
    ``hard_after`` is set."""
    return Deleter(ctx.client, ctx.profile.kind, ctx.batch_size, ctx.limit, ctx.hard_method is not None,
                   recheck, observer=ctx.observer, hard_limit=ctx.hard_limit, hard_after=hard_after,
                   transactions=ctx.transactions)


async def delete(ctx: Context, deleter: Deleter, order: list[Key], progress: Progress | None,
                 versions: Versions | None, report: DeletionReport | None = None,
                 refs: References | None = None) -> DeletionReport:
    """Delete ``order`` (already proven in scope and confirmed), pinned to ``versions``; ``report``
    (when given) is filled as the batches go; ``refs`` lets independent batches go side by side."""
    with ctx.observer.phase("delete"):
        return await deleter.delete(order, progress, versions=versions, report=report, refs=refs)


async def verify(ctx: Context, result: Result, readable: list[Key], history: list[Key]) -> None:
    """Read back: any of ``readable`` still there joins ``remaining``; the history of ``history``
    (the deleted resources, or a sample of them) is read and what is left recorded."""
    with ctx.observer.phase("verify"):
        result.history_remaining = await read_back.history_left(ctx.client, ctx.limit, history)
        result.history_checked = len(history)
        left = await read_back.still_readable(ctx.client, ctx.limit, readable)
        result.remaining += [key for key in left if key not in result.remaining]


def interrupted(result: Result, failure: OutcomeError, removed: int) -> None:
    """The upstream failed mid-way: ``removed`` (measured) is a lower bound, the rest unknown."""
    result.interruption = failure
    result.removed_before_failure = removed
