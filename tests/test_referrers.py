"""Reverse reference searches (``engine.references``) on a scripted upstream: which searches go."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl, urlsplit

import httpx

from purgeproxy.engine.context import Context
from purgeproxy.engine.references import find_referrers
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.definitions import definitions_for
from purgeproxy.servers.profile import UpstreamProfile
from purgeproxy.servers.registry import kind_named

BASE = "http://upstream.test/fhir"


async def test_parameters_whose_every_path_the_check_cannot_read_are_not_searched() -> None:
    """``ActivityDefinition?composed-of`` indexes ``relatedArtifact.where(type=...).resource``: no
    hit of it could pass the check, so it is not sent; ``Observation?focus`` is, and its one real
    hit is found while a candidate the upstream returned without the reference is not."""
    searched: list[tuple[str, str]] = []
    hit = {"resourceType": "Observation", "id": "o1", "focus": [{"reference": "Patient/p1"}]}
    stray = {"resourceType": "Observation", "id": "o2", "focus": [{"reference": "Patient/p2"}]}

    def answer(url: str) -> dict[str, object]:
        path = urlsplit(url).path.rsplit("/", 1)[-1]
        params = dict(parse_qsl(urlsplit(url).query))
        param = next(k for k in params if not k.startswith("_"))
        searched.append((path, param))
        found = [hit, stray] if (path, param) == ("Observation", "focus") else []
        return {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in found]}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            entries = json.loads(request.content)["entry"]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": [
                {"response": {"status": "200 OK"}, "resource": answer(f"{BASE}/{e['request']['url']}")}
                for e in entries]})
        return httpx.Response(200, json=answer(str(request.url)))

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    profile = UpstreamProfile(kind_named("generic"), definitions_for("4.0.1"), None)
    ctx = Context(FhirClient(BASE, http), profile, asyncio.Semaphore(4), 100, 1000, "never")
    try:
        found = await find_referrers(ctx, [("Patient", "p1")])
    finally:
        await http.aclose()
    assert ("Observation", "focus") in searched and ("Task", "owner") in searched
    assert not {pair for pair in searched if pair[1] in ("composed-of", "derived-from", "predecessor", "successor")}
    assert len(searched) == len(set(searched))  # each searched once
    assert found.points_at == {("Observation", "o1"): {("Patient", "p1")}}
    assert ("Observation", "o2") in found.ignored
