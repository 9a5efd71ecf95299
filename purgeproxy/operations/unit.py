"""An operation of the proxy as one declared unit: what it is called, how it is authorized, where
it answers, what it accepts, how it is advertised and how its stored jobs run.

Each operation module declares its unit next to its handlers; :data:`purgeproxy.operations.OPERATIONS`
lists them, and the routes, the CapabilityStatement entries and the job runners are generated from
that one list, so that an operation cannot be routed without being advertised as declared, or
queued as a job nobody runs. The routing rule (:mod:`purgeproxy.classify`) keeps its own table of
exact spellings, framework-free; tests/test_operation_units.py proves it agrees with these routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.jobs.store import Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome, Runner
from purgeproxy.operations.vendor import Spec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JobRunner = Callable[[web.Application, Job, Checkpoint], Awaitable[JobOutcome]]


@dataclass(frozen=True)
class Route:
    """One route: ``path`` is relative to the FHIR base, in aiohttp's pattern syntax."""

    method: str
    path: str
    handler: Handler


@dataclass(frozen=True)
class OperationUnit:
    """One of the proxy's operations, declared once.

    ``name`` names it in jobs and in this list; ``auth`` is what the Authorizer is asked for (the
    names of ``config.Operation`` and the default scopes); ``parameters`` is the spec its handler
    validates input with (``vendor.Spec``'s kinds, and ``resource`` for ``$purge``'s
    ``compartmentDefinition``, which ``params.parse_purge`` reads); ``advertised`` is its
    CapabilityStatement entry, if it has one; ``job_runner`` runs its stored jobs
    (``Prefer: respond-async``), if it has any.
    """

    name: str
    auth: str
    routes: tuple[Route, ...]
    parameters: Spec
    advertised: AdvertisedOperation | None = None
    job_runner: JobRunner | None = None


def add_routes(app: web.Application, base: str, units: Iterable[OperationUnit]) -> None:
    """Every unit's routes, in declaration order (before the pass-through catch-all)."""
    for unit in units:
        for route in unit.routes:
            app.router.add_route(route.method, base + route.path, route.handler)


def advertised(units: Iterable[OperationUnit]) -> list[AdvertisedOperation]:
    return [unit.advertised for unit in units if unit.advertised is not None]


def job_runners(app: web.Application, units: Iterable[OperationUnit]) -> dict[str, Runner]:
    """The worker pool's runners, by the operation name its jobs are stored under."""
    return {unit.name: partial(unit.job_runner, app) for unit in units if unit.job_runner is not None}
