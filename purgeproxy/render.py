"""The one way the proxy answers with a FHIR resource it made itself.

``render(request, resource, status=200, headers=None)`` gives the HTTP answer for a FHIR JSON
dict (an OperationOutcome, ``Parameters``, an async status Bundle, a job list, a receipt, the
augmented CapabilityStatement ...) in the format the request asks for (``_format`` over
``Accept``; JSON or XML), with ``_pretty`` and ``_summary`` applied: see
``purgeproxy.fhir.formats`` for the rules. Handlers call it for every answer they make; failures
are raised as ``OutcomeError`` and rendered by the error middleware (``purgeproxy.errors``) through
:func:`render_failure`, which falls back to JSON when the request asked for a format the proxy
cannot produce (so the 406 itself is JSON). Operations call :func:`requested_of` before doing
anything, so an unacceptable format is refused before the first upstream write, never after.

XML is written with the element tables of the upstream's FHIR version once it is known (the
profile learnt from its ``metadata``), FHIR 4.0.1's until then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from purgeproxy.app_keys import PROFILE
from purgeproxy.fhir.formats import FormatRefused, Requested, requested, serialize
from purgeproxy.fhir.outcome import FHIR_JSON, OutcomeError
from purgeproxy.fhir.xml import XmlError, tables_for
from purgeproxy.servers.profile import DEFAULT_FHIR_VERSION

REQUESTED = web.RequestKey("requested_format", Requested)


def requested_of(request: web.Request) -> Requested:
    """What the request asks for (worked out once); ``OutcomeError`` 406 or 400 when it cannot
    be produced or is malformed."""
    found = request.get(REQUESTED)
    if found is None:
        try:
            found = requested(request.query, request.headers.get("Accept"))
        except FormatRefused as refused:
            raise OutcomeError(refused.status, refused.code, refused.text, refused.expression) from None
        request[REQUESTED] = found
    return found


def fhir_version_of(request: web.Request) -> str:
    """The upstream's FHIR version when known (configured or learnt), otherwise 4.0.1."""
    return app_fhir_version(request.app)


def app_fhir_version(app: web.Application) -> str:
    """:func:`fhir_version_of` for code that has the app but no ``web.Request`` (the front)."""
    profiles = app.get(PROFILE)
    return (profiles.known_version() if profiles is not None else None) or DEFAULT_FHIR_VERSION


def render(request: web.Request, resource: dict[str, Any], status: int = 200,
           headers: Mapping[str, str] | None = None, fhir_version: str | None = None) -> web.Response:
    """The answer carrying ``resource`` in the requested format. ``fhir_version`` overrides the
    upstream's (the CapabilityStatement says its own)."""
    wanted = requested_of(request)
    try:
        tables = tables_for(fhir_version or fhir_version_of(request))
    except KeyError:  # a version the proxy does not ship (the statement's own): the upstream's
        tables = tables_for(fhir_version_of(request))
    try:
        body = serialize(resource, wanted, tables)
    except XmlError as failure:
        raise OutcomeError(406, "not-supported", f"this answer cannot be given as FHIR XML: {failure}",
                           "_format") from None
    return web.Response(status=status, body=body, content_type=wanted.content_type, charset="utf-8",
                        headers={**(headers or {}), "Vary": "Accept"})  # caches keep the formats apart


def render_failure(request: web.Request, document: dict[str, Any], status: int,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """A failure's OperationOutcome: in the requested format when possible, otherwise JSON."""
    try:
        return render(request, document, status, headers)
    except OutcomeError:
        return web.Response(status=status, text=json.dumps(document), content_type=FHIR_JSON, headers=headers)
