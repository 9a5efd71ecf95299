"""Scope is proven, not trusted: an upstream that ignores a search parameter deletes nothing extra."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from purgeproxy.engine.attachments import PROBE
from purgeproxy.fhir.definitions import definitions_for
from tests.fake_upstream import BASE, scripted_upstream

TOKEN = "scope-token"


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


def deleted_urls(router: respx.MockRouter) -> list[str]:
    urls = []
    for call in router.calls:
        if call.request.method == "POST" and str(call.request.url) == BASE:
            bundle = json.loads(call.request.content)
            urls += [e["request"]["url"] for e in bundle["entry"] if e["request"]["method"] == "DELETE"]
        elif call.request.method == "DELETE":
            urls.append(str(call.request.url))
    return urls


async def test_only_resources_that_reference_the_patient_are_deleted(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", headers={"Authorization": f"Bearer {TOKEN}"})
    outcome = answer.json()
    assert answer.status_code == 200
    assert sorted(deleted_urls(upstream)) == ["Observation/mine", "Observation/versioned", "Patient/p1"]
    report = "\n".join(i["diagnostics"] for i in outcome["issue"])
    for kept in ("someone-else", "group-trap", "other-server"):
        assert f"the upstream ignored the search parameter Observation?subject: it returned Observation/{kept}" in report


async def test_every_compartment_search_asks_for_strict_handling(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        await http.post(f"{proxy}/Patient/p1/$purge?dryRun=true", headers={"Authorization": f"Bearer {TOKEN}"})
    gets = [c.request for c in upstream.calls if c.request.method == "GET" and "?" in str(c.request.url)
            and not c.request.url.path.endswith("/_history")]  # histories are asked _since, not searched
    probes = [r for r in gets if PROBE in r.url.params]  # does the upstream refuse unknown Binary params?
    assert len(probes) == 1 and probes[0].headers["Prefer"] == "handling=strict"
    searches = [r for r in gets if r not in probes]
    pairs = {(r.url.path.rsplit("/", 1)[1], next(k for k in r.url.params if k != "_count")) for r in searches}
    compartment = {(t, p) for t, params in definitions_for("4.0.1").patient_compartment.items() for p in params}
    assert all(r.headers["Prefer"] == "handling=strict" for r in searches)
    assert compartment <= pairs and len(compartment) == 102  # every pair of the R4 Patient compartment
    # and every other parameter that can cite a Patient elsewhere (98), but the 40 whose every
    # path is filtered by a FHIRPath where (relatedArtifact): the check could accept no hit of theirs
    definitions = definitions_for("4.0.1")
    unreadable = {(t, p) for t, p in definitions.params_targeting("Patient")
                  if all(path.filtered for path in definitions.reference_paths(t, p) or ())}
    assert len(pairs - compartment) == 58 and not (pairs & unreadable) and len(unreadable - compartment) == 40
    assert len(searches) == len(pairs)  # each once: a dry run has no verification round
    assert deleted_urls(upstream) == []
