"""The pass-through's fast route: ordinary requests skip the proxy's own routes.

aiohttp's router tries the resources registered under the FHIR base one after another, so every
pass-through request was matched against each operation route's pattern before reaching the
catch-all (11 resolutions, ~30 Python calls per request). This resource is registered first under
the base and takes a request only when no other route of the app can: every other route under the
base has a literal segment (``$purge``, ``metadata``, ``_operations`` ...) or a method of its own
(``DELETE [type]/[id]``), and a request with none of those literal segments and none of those
methods cannot match any of them. Everything else it declines, and the router goes on to the
routes in their usual order, the pass-through catch-all last, exactly as without this resource.

It only decides where a request is handled, never whether it is forwarded: the pass-through's
own rule (``purgeproxy.classify``) still judges every request it receives.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

_ANY = "*"


class OrdinaryRequests(web.DynamicResource):
    """``{base}/{tail:.*}`` for requests that no other route of the app can match."""

    def __init__(self, base: str, app: web.Application) -> None:
        super().__init__(base + "/{tail:.*}")
        self._base = base
        self._app = app
        self._claims: tuple[frozenset[str], dict[str, frozenset[str]]] | None = None

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        # path_safe: what aiohttp's route patterns are matched against
        if self.another_route_may_take(request.method, request.rel_url.path_safe):
            return None, set()
        return await super().resolve(request)

    def another_route_may_take(self, method: str, path: str) -> bool:
        """Whether some other route of the app could match ``method`` ``path`` (decoded, as
        aiohttp's route patterns see it): then this resource declines the request."""
        claims = self._claims
        if claims is None:
            claims = self._claims = self._claims_of(self._app.router)
        always, literals = claims
        if method in always:
            return True
        wanted = literals.get(method)
        return wanted is not None and not wanted.isdisjoint(path.split("/"))

    def _claims_of(self, router: web.UrlDispatcher) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
        """(methods some route under the base takes whatever the path, {method: literal segments
        one of which every other route under the base for that method requires})."""
        always: set[str] = set()
        literals: dict[str, set[str]] = {}
        prefix = self._base + "/"
        for route in router.routes():
            resource = route.resource
            if resource is None or resource is self or _is_catch_all(resource, self._base):
                continue
            canonical = resource.canonical
            if canonical != self._base and not canonical.startswith(prefix):
                continue  # outside the base (/healthz ...): never meets a base path
            fixed = [part for part in canonical[len(prefix):].split("/") if "{" not in part]
            method = route.method
            if not fixed or method == _ANY:
                always.add(method)
                continue
            literals.setdefault(method, set()).add(fixed[-1])
        if _ANY in always:
            always |= {route.method for route in router.routes()} | set(hdrs.METH_ALL)
        return frozenset(always), {method: frozenset(parts) for method, parts in literals.items()}


def _is_catch_all(resource: web.AbstractResource, base: str) -> bool:
    """The pass-through's own routes: the base itself and ``{base}/{tail:.*}``."""
    return resource.canonical in (base, base + "/{tail}")
