"""Firely Server: detection (only with the erase plugin) and $erase (scripted: no server here)."""

from __future__ import annotations

import pytest
import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


@pytest.mark.parametrize(("document", "name"), [
    (statement("Firely Server", "erase"), "firely"),
    (statement("Vonk", "erase"), "firely"),
    (statement("Firely Server"), "generic"),  # the erase plugin is not loaded
])
def test_detection(document: dict, name: str) -> None:
    assert detect(document).name == name


@respx.mock
async def test_erases_and_failures_are_reported(client: FhirClient) -> None:
    kind = kind_named("firely")
    respx.post(f"{BASE}/Observation/o1/$erase").respond(200, json={"resourceType": "OperationOutcome"})
    respx.post(f"{BASE}/Observation/o2/$erase").respond(403, json={"resourceType": "OperationOutcome"})
    assert await kind.hard_delete(client, ("Observation", "o1")) is None
    assert await kind.hard_delete(client, ("Observation", "o2")) == "$erase answered 403"
