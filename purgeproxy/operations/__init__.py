"""The proxy's own destructive operations: HTTP handlers that parse, validate and call the engine.

Each operation is declared once, as an :class:`~purgeproxy.operations.unit.OperationUnit` in its
module; :data:`OPERATIONS` is the list the routes, the CapabilityStatement entries and the job
runners are generated from. A new operation adds its unit here.
"""

from __future__ import annotations

from aiohttp import web

from purgeproxy.operations import (
    async_status,
    bulk_delete,
    cascade,
    cohort,
    delete_expunge,
    erase,
    expunge,
    purge,
    unit,
)

# $bulk-delete before the units routing DELETE /{type} and /{type}/{id}: the first matching route wins.
OPERATIONS = [bulk_delete.BULK_DELETE, purge.PURGE, erase.ERASE, expunge.EXPUNGE, delete_expunge.DELETE_EXPUNGE,
              cascade.CASCADE_DELETE, cohort.GROUP_PURGE, cohort.BULK_PURGE]


def add_routes(app: web.Application, base: str) -> None:
    """Register before the pass-through catch-all: the first matching route wins."""
    unit.add_routes(app, base, OPERATIONS)
    async_status.add_routes(app, base)
