"""aiohttp wiring: routes, the two pooled upstream clients, start-up and clean-up.

Route order matters: the proxy's own routes are registered before the catch-all pass-through, and
aiohttp's router tries resources in registration order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from purgeproxy import metrics, operations, routes
from purgeproxy.access_log import PASSED_THROUGH, access_log
from purgeproxy.app_keys import (
    AUTHORIZER,
    CALLER_LIMITS,
    CONFIG,
    FHIR_CLIENT,
    HARD_DELETE_LIMIT,
    OPERATIONS,
    PASSTHROUGH,
    PASSTHROUGH_PIPE,
    PROFILE,
    UPSTREAM_LIMIT,
)
from purgeproxy.config import Config
from purgeproxy.errors import outcome_errors
from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.fhir.upstream_auth import upstream_auth
from purgeproxy.operations.job_runners import jobs_context
from purgeproxy.operations.unit import advertised
from purgeproxy.ordinary_route import OrdinaryRequests
from purgeproxy.passthrough import Passthrough
from purgeproxy.receipts import routes as receipt_routes
from purgeproxy.security.limits import CallerLimits
from purgeproxy.security.wiring import auth_http_client, make_authorizer
from purgeproxy.servers.profile import ProfileCache
from purgeproxy.upstream_pipe import UpstreamPipe
from purgeproxy.upstream_tls import ssl_context


def _passthrough_pipe(config: Config) -> UpstreamPipe:
    """The pass-through's connections: no cookies, no decompression, no headers of its own but
    ``Host`` and the body's framing (a transparent proxy sends what the client sent)."""
    upstream = config.upstream
    return UpstreamPipe(
        upstream.url,
        limit=upstream.pool.max_connections,
        keepalive=upstream.pool.keepalive_seconds,
        connect_timeout=upstream.timeouts.connect,
        read_timeout=upstream.timeouts.read,
        ssl_context=ssl_context(upstream.tls),  # the same trust as the FHIR client's
    )


async def _upstream_clients(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[PASSTHROUGH_PIPE] = pipe = _passthrough_pipe(config)
    app[PASSTHROUGH] = Passthrough(config, pipe)
    auth_http = auth_http_client()
    http = make_http_client(
        config.upstream.timeouts.connect,
        config.upstream.timeouts.read,
        config.upstream.pool.max_connections,
        upstream_auth(config.upstream.url, config.upstream.auth, auth_http),
        verify=ssl_context(config.upstream.tls),
    )
    app[AUTHORIZER] = make_authorizer(config, auth_http)
    app[CALLER_LIMITS] = CallerLimits(config.auth.max_concurrent_per_caller, config.auth.retry_after_seconds)
    app[FHIR_CLIENT] = client = FhirClient(config.upstream.url, http, metrics.proxy_call_failed)
    app[PROFILE] = ProfileCache(client, config.upstream.kind, config.upstream.fhir_version,
                                {"purge.excluded_types": config.purge.excluded_types})
    app[UPSTREAM_LIMIT] = asyncio.Semaphore(config.purge.concurrency)
    # one bound for every purge of the process, as purge.concurrency is: the upstream's capacity
    # does not grow with the purges running (a $bulk-purge runs 4 at once), and each connection in
    # flight costs httpx's pool work on every request (per purge, 64 in flight at 4 children)
    app[HARD_DELETE_LIMIT] = asyncio.Semaphore(config.purge.hard_delete_concurrency)
    yield
    await pipe.close()
    await http.aclose()
    await auth_http.aclose()


async def _passthrough(request: web.Request) -> web.StreamResponse:
    request[PASSED_THROUGH] = True
    return await request.app[PASSTHROUGH].handle(request)


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[access_log, outcome_errors])  # errors inside: logged as answered
    app[CONFIG] = config
    app[OPERATIONS] = advertised(operations.OPERATIONS) + (receipt_routes.ADVERTISED if config.receipts.enabled else [])
    app.cleanup_ctx.append(_upstream_clients)
    app.cleanup_ctx.append(receipt_routes.receipts_context)  # before the jobs: a resumed job gets its receipt
    app.cleanup_ctx.append(jobs_context)  # after the clients: its workers stop before they close
    base = config.server.base_path
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    ordinary = OrdinaryRequests(base, app)  # first under the base: requests no other route can take
    app.router.register_resource(ordinary)
    ordinary.add_route("*", _passthrough)
    app.router.add_get(f"{base}/metadata", routes.metadata)
    operations.add_routes(app, base)
    receipt_routes.add_routes(app, base)
    app.router.add_route("*", base, _passthrough)
    app.router.add_route("*", base + "/{tail:.*}", _passthrough)
    return app
