"""The proxy's own non-destructive routes: liveness, readiness, metrics and the CapabilityStatement."""

from __future__ import annotations

import json

from aiohttp import web

from purgeproxy import metrics as prometheus
from purgeproxy.access_log import UPSTREAM_STATUS
from purgeproxy.app_keys import FHIR_CLIENT, OPERATIONS, PASSTHROUGH
from purgeproxy.capabilities import advertise
from purgeproxy.fhir.client import UpstreamError
from purgeproxy.fhir.formats import FORMAT_PARAMETERS
from purgeproxy.fhir.outcome import FHIR_JSON
from purgeproxy.render import render, requested_of


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing about the upstream on purpose."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the upstream answers ``metadata``, so requests have somewhere to go."""
    try:
        answer = await request.app[FHIR_CLIENT].capabilities()
    except UpstreamError as failure:
        return web.json_response({"status": "unavailable", "reason": failure.text}, status=503)
    if answer.status != 200:
        return web.json_response(
            {"status": "unavailable", "reason": f"upstream metadata answered {answer.status}"},
            status=503,
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, over every worker process under ``serve --workers N``."""
    return web.Response(body=prometheus.exposition(), headers={"Content-Type": prometheus.CONTENT_TYPE})


async def metadata(request: web.Request) -> web.StreamResponse:
    """The upstream's CapabilityStatement with the proxy's operations added, in the format asked
    for (read from the upstream as JSON, rendered by ``purgeproxy.render``: XML clients see the
    operations too). Other parameters (``mode=terminology`` ...) pass through untouched."""
    if set(request.query) - FORMAT_PARAMETERS:
        return await request.app[PASSTHROUGH].handle(request)
    requested_of(request)  # 406 before asking the upstream
    forwarded = {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
    answer = await request.app[FHIR_CLIENT].capabilities(forwarded)  # UpstreamError: purgeproxy.errors
    request[UPSTREAM_STATUS] = answer.status
    body = answer.body
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        return web.Response(status=answer.status, text=json.dumps(body), content_type=FHIR_JSON)
    if answer.status == 200 and answer.resource_type == "CapabilityStatement":
        body = advertise(body, request.app[OPERATIONS])
    version = body.get("fhirVersion") if body["resourceType"] == "CapabilityStatement" else None
    return render(request, body, answer.status, fhir_version=version if isinstance(version, str) else None)
