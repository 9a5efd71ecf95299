"""The proxy's own destructive operations: HTTP handlers that parse, validate and call the engine."""

from __future__ import annotations

from aiohttp import web

from purgeproxy.operations import (
    async_status,
    cascade,
    delete_expunge,
    erase,
    expunge,
    purge,
)

ADVERTISED = [purge.ADVERTISED, erase.ADVERTISED, expunge.ADVERTISED, delete_expunge.ADVERTISED]


def add_routes(app: web.Application, base: str) -> None:
    """Register before the pass-through catch-all: the first matching route wins."""
    purge.add_routes(app, base)
    for module in (erase, expunge, delete_expunge, cascade):
        module.add_routes(app, base)
    async_status.add_routes(app, base)
