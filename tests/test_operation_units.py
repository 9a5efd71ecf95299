"""Operations are declared once (``purgeproxy.operations.OPERATIONS``): the routes, the
CapabilityStatement entries, the job runners and the authorization names all come from that list,
and the routing rule (``purgeproxy.classify``) takes exactly the declared routes as the proxy's
operations, no more and no fewer.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, get_args

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from purgeproxy import classify, config
from purgeproxy.app import create_app
from purgeproxy.app_keys import JOB_WORKERS
from purgeproxy.operations import OPERATIONS, async_status
from purgeproxy.operations.params import BOOLEAN_PARAMETERS
from purgeproxy.operations.unit import OperationUnit, Route
from purgeproxy.receipts import routes as receipt_routes
from purgeproxy.security.scopes import DEFAULT_SCOPES
from tests.conftest import config_for

TOKEN = "operation-units-token"
# What turns a declared DELETE route into the destructive request it is declared for.
FLAGS = {("DELETE", "/{type}/{id}"): "_cascade=delete", ("DELETE", "/{type}"): "_expunge=true"}
STATEMENT = {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
             "format": ["json"], "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}]}
SEEN = web.AppKey("seen", list)
Upstream = tuple[str, list[tuple[str, str]]]  # its FHIR base, and the requests it received


def declared() -> list[tuple[OperationUnit, Route]]:
    return [(unit, route) for unit in OPERATIONS for route in unit.routes]


def concrete(route: Route) -> tuple[str, str]:
    """The route's path with an Observation (Patient where it names one) and its query."""
    path = route.path.replace("{type}", "Observation").replace("{id}", "o1").replace("{vid}", "1")
    return path, FLAGS.get((route.method, route.path), "")


def test_names_are_unique_and_known_to_the_authorizer() -> None:
    names = [unit.name for unit in OPERATIONS]
    assert len(set(names)) == len(names)
    auths = {unit.auth for unit in OPERATIONS}
    assert auths == set(get_args(config.Operation)) == set(DEFAULT_SCOPES)


def test_purge_declares_the_parameters_its_parser_accepts() -> None:
    purge = next(unit for unit in OPERATIONS if unit.name == "$purge")
    assert set(purge.parameters) == {*BOOLEAN_PARAMETERS, "compartmentDefinition", "reason"}


def test_every_declared_route_is_the_operation_the_rule_names() -> None:
    """Each route, in its canonical spelling, is what ``classify`` calls the proxy's operation, under
    the unit's authorization name: the pass-through would refuse it, the route takes it."""
    for unit, route in declared():
        path, query = concrete(route)
        verdict = classify.classify(route.method, path, query, CIMultiDict())
        assert verdict == classify.Operation(unit.auth, None if path.startswith("/$") else path.split("/")[1]), \
            (unit.name, route)


def _pattern(path: str) -> str:
    """``/{type}/{id}/_history/{vid}/$x`` and the rule's ``T/I/_history/I/$`` both as ``/*/*/_history/*/$x``."""
    return re.sub(r"\{[a-z]+\}", "*", path)


def test_the_rules_operations_are_exactly_the_declared_routes() -> None:
    """The rule's table of exact spellings (``$`` operations; DELETE flags are read separately)
    and the declared routes are the same set: no spelling the rule lets through without a route."""
    rule = set()
    for name, (methods, shapes) in classify._SHAPES.items():
        for shape in shapes:
            path = "".join("/" + {"T": "*", "I": "*", "$": name}.get(part, part) for part in shape)
            rule |= {(method, classify._AUTHORIZED_AS.get(name, name), path) for method in methods}
    routes = {(route.method, unit.auth, _pattern(route.path)) for unit, route in declared() if "$" in route.path}
    assert rule == routes


def test_the_app_routes_exactly_the_declared_operations() -> None:
    """Besides health, ``metadata``, the job status URLs and the catch-all pass-through, the app's
    routes are the declared ones, with the declared handlers, in declaration order."""
    app = create_app(config_for("http://upstream.invalid/fhir"))
    infrastructure = ("purgeproxy.routes", "purgeproxy.app", async_status.__name__, "purgeproxy.receipts.routes")
    served = [(r.method, r.resource.canonical, r.handler) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD" and r.handler.__module__ not in infrastructure]
    assert served == [(route.method, "/fhir" + route.path, route.handler) for _, route in declared()]


async def test_the_worker_pool_runs_the_declared_job_runners(upstream: Upstream) -> None:
    """The running app's workers hold one runner per declared ``job_runner``, under the unit's
    name, which is what its handler stores jobs as (``$purge``; ``$expunge everything`` too)."""
    app = create_app(config_for(upstream[0]))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        runners = app[JOB_WORKERS].runners
    finally:
        await server.close()
    declared_runners = {unit.name for unit in OPERATIONS if unit.job_runner is not None}
    assert declared_runners == {"$purge", "Group $purge", "$bulk-purge", "$bulk-delete"}
    assert set(runners) == declared_runners | {"$reapply"}  # re-applying erasures (purgeproxy.receipts)


async def test_the_worker_pool_sweeps_with_the_configured_retention(upstream: Upstream) -> None:
    """``jobs.retention_days`` reaches the running pool's sweep (the sweep itself is tested on
    both stores in test_job_store.py); a read-only pool does not sweep at all."""
    for read_only, sweeps in ((False, True), (True, False)):
        app = create_app(config_for(upstream[0], jobs={"retention_days": 7}, safety={"read_only": read_only}))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            pool = app[JOB_WORKERS]
            assert pool.settings.retention_seconds == 7 * 86400
            assert ("job-retention" in {task.get_name() for task in pool.tasks}) is sweeps
        finally:
            await server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """Answers ``metadata`` with a small CapabilityStatement and records every other request."""
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/fhir/metadata":
            return web.json_response(STATEMENT)
        request.app[SEEN].append((request.method, request.raw_path))
        return web.json_response({"resourceType": "OperationOutcome", "issue": []})

    app = web.Application()
    app[SEEN] = []
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/fhir")), app[SEEN]
    await server.close()


async def test_every_declared_route_answers_itself_and_every_advertised_operation_is_listed(
        make_proxy: Any, upstream: Upstream) -> None:
    upstream_url, seen = upstream
    proxy = await make_proxy(upstream_url, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=30) as http:
        for unit, route in declared():
            path, query = concrete(route)
            answer = await http.request(route.method, proxy + path + (f"?{query}" if query else ""))
            assert answer.status_code == 401, (unit.name, route.method, route.path, answer.text)
            assert answer.json()["resourceType"] == "OperationOutcome"
        assert seen == []
        served = (await http.get(f"{proxy}/metadata")).json()
    server = next(rest for rest in served["rest"] if rest["mode"] == "server")
    for unit in OPERATIONS:
        if unit.advertised is None:
            continue
        holder = server if unit.advertised.resource_type is None else next(
            r for r in server["resource"] if r["type"] == unit.advertised.resource_type)
        assert unit.advertised.entry() in holder["operation"], unit.name
    listed = [o["name"] for o in server.get("operation", [])]
    listed += [o["name"] for r in server["resource"] for o in r.get("operation", [])]
    receipts = [operation.name for operation in receipt_routes.ADVERTISED]  # receipts are on by default
    assert sorted(listed) == sorted([u.advertised.name for u in OPERATIONS if u.advertised is not None] + receipts)
