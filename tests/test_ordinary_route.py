"""The pass-through's fast route (purgeproxy.ordinary_route) never takes a request that one of the
proxy's own routes would: for every row of the routing table (each destructive operation in each
spelling), every ordinary request, and every registered route's own path, the request is either
declined by the fast route, or no route of the app but the pass-through catch-all matches it."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from purgeproxy.app import create_app
from purgeproxy.ordinary_route import OrdinaryRequests
from tests.helpers import config_for
from tests.test_routing_table import Req, ordinary, table

BASE = "/fhir"


def _app() -> web.Application:
    app = create_app(config_for("http://127.0.0.1:9/fhir"))
    app.router.freeze()
    return app


def _fast(app: web.Application) -> OrdinaryRequests:
    return next(r for r in app.router.resources() if isinstance(r, OrdinaryRequests))


async def _operation_routes_matching(app: web.Application, request: web.Request) -> list[str]:
    """The app's routes other than the pass-through's that match ``request``."""
    found = []
    for resource in app.router.resources():
        if isinstance(resource, OrdinaryRequests) or resource.canonical in (BASE, BASE + "/{tail}"):
            continue
        match, _ = await resource.resolve(request)
        if match is not None:
            found.append(f"{match.route.method} {resource.canonical}")
    return found


def _requests(app: web.Application) -> list[tuple[str, str]]:
    rows: list[Req] = [*table("p1", "o1").values(), *ordinary("p1", "o1").values()]
    targets = [(r.method, BASE + r.target) for r in rows]
    for route in app.router.routes():  # each route's own path, its variables filled in
        path = route.resource.canonical if route.resource is not None else ""
        filled = path.replace("{type}", "Patient").replace("{id}", "p1").replace("{vid}", "1") \
            .replace("{job_id}", "j1").replace("{receipt_id}", "r1").replace("{tail}", "Patient/p1")
        for method in (route.method, "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD") if route.method != "*" else ("GET",):
            targets.append((method, filled))
    return targets


async def test_the_fast_route_takes_only_what_no_other_route_matches() -> None:
    app = _app()
    fast = _fast(app)
    taken = 0
    for method, target in _requests(app):
        request = make_mocked_request(method, target, app=app)
        match, _ = await fast.resolve(request)
        if match is None:
            continue
        taken += 1
        assert await _operation_routes_matching(app, request) == [], f"{method} {target}"
    assert taken > 50  # the fast route is not simply declining everything


async def test_the_router_resolves_every_request_as_without_the_fast_route() -> None:
    """The same route (or the same error) with and without the fast route; taken by the fast
    route counts as the catch-all, whose handler it shares."""
    app, plain = _app(), create_app(config_for("http://127.0.0.1:9/fhir"))
    plain.router.unindex_resource(_fast(plain))  # resolution walks the index only
    plain.router.freeze()

    def named(match: web.UrlMappingMatchInfo) -> str:
        if match.http_exception is not None:
            return str(match.http_exception.status)
        resource = match.route.resource
        assert resource is not None
        canonical = BASE + "/{tail}" if isinstance(resource, OrdinaryRequests) else resource.canonical
        return f"{match.route.method} {canonical}"

    for method, target in _requests(app):
        fast = await app.router.resolve(make_mocked_request(method, target, app=app))
        slow = await plain.router.resolve(make_mocked_request(method, target, app=plain))
        assert named(fast) == named(slow), f"{method} {target}"


async def test_ordinary_reads_and_searches_take_the_fast_route() -> None:
    app = _app()
    fast = _fast(app)
    for method, target in [("GET", "/fhir/Patient/p1"), ("GET", "/fhir/Observation"), ("PUT", "/fhir/Patient/p1"),
                           ("POST", "/fhir/Observation"), ("GET", "/fhir/Patient/p1/_history"),
                           ("PATCH", "/fhir/Patient/p1")]:
        match, _ = await fast.resolve(make_mocked_request(method, target, app=app))
        assert match is not None, f"{method} {target}"
    for method, target in [("DELETE", "/fhir/Patient/p1"), ("GET", "/fhir/metadata"), ("POST", "/fhir/Patient/p1/$purge"),
                           ("GET", "/fhir/_operations/bulk-delete/j1"), ("POST", "/fhir/Patient/p1/%24purge")]:
        match, _ = await fast.resolve(make_mocked_request(method, target, app=app))
        assert match is None, f"{method} {target}"
