"""The compartment resolver on a scripted upstream: what goes side by side, and failures."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from purgeproxy.engine.compartment import Resolver
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.definitions import definitions_for
from purgeproxy.fhir.search import ResolutionError

BASE = "http://upstream.test/fhir"


async def test_the_patient_read_goes_beside_the_searches_and_its_failure_stops_them() -> None:
    """The searches do not wait for the Patient's read (HAPI-style normalised references need no
    history first); when that read fails the resolution fails with it, and the searches still
    under way are cancelled, not left running against the upstream."""
    searching = asyncio.Event()
    cancelled: list[bool] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/fhir/Patient/p1":  # a search (alone or in a batch Bundle)
            searching.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        await searching.wait()  # answered only once a search is under way: they go together
        return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    compartment = {"Observation": ("subject", "performer"), "Condition": ("subject",)}
    resolver = Resolver(FhirClient(BASE, http), definitions_for("4.0.1"), compartment, 100,
                        asyncio.Semaphore(4), normalised_references=True)
    try:
        with pytest.raises(ResolutionError, match="Patient/p1 answered 500"):
            await asyncio.wait_for(resolver.resolve("p1"), 10)
        await asyncio.sleep(0)
    finally:
        await http.aclose()
    assert cancelled
