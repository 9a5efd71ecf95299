"""Upstream kinds: detected from ``metadata``, and each hard delete is the vendor's own call."""

from __future__ import annotations

import json

import pytest
import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.base import FIRELY, GENERIC, HAPI, MEDPLUM, detect
from tests.fake_upstream import BASE


def statement(software: str, *operations: str) -> dict:
    return {"resourceType": "CapabilityStatement", "software": {"name": software},
            "rest": [{"mode": "server", "operation": [{"name": o} for o in operations]}]}


@pytest.mark.parametrize(("document", "kind"), [
    (statement("HAPI FHIR Server", "expunge"), HAPI),
    (statement("HAPI FHIR Server"), GENERIC),  # expunge disabled: soft delete only
    (statement("Smile CDR", "expunge"), HAPI),
    (statement("Medplum"), MEDPLUM),
    (statement("Firely Server", "erase"), FIRELY),
    (statement("Firely Server"), GENERIC),  # the erase plugin is not loaded
    (statement("Some FHIR server", "expunge"), GENERIC),
    ({"resourceType": "Bundle", "type": "searchset", "total": 0}, GENERIC),  # the bare Medplum engine
    ("not json at all", GENERIC),
])
def test_detection_from_the_capability_statement(document: object, kind: object) -> None:
    assert detect(document) == kind



@respx.mock
async def test_hapi_expunges_deleted_resources_and_previous_versions(client: FhirClient) -> None:
    route = respx.post(f"{BASE}/Observation/o1/$expunge").respond(200, json={"resourceType": "Parameters"})
    assert await HAPI.hard_delete(client, ("Observation", "o1")) is None
    sent = json.loads(route.calls.last.request.content)
    assert {p["name"]: p["valueBoolean"] for p in sent["parameter"]} == {
        "expungeDeletedResources": True, "expungePreviousVersions": True}


@respx.mock
async def test_firely_erases_and_failures_are_reported(client: FhirClient) -> None:
    respx.post(f"{BASE}/Observation/o1/$erase").respond(200, json={"resourceType": "OperationOutcome"})
    respx.post(f"{BASE}/Observation/o2/$erase").respond(403, json={"resourceType": "OperationOutcome"})
    assert await FIRELY.hard_delete(client, ("Observation", "o1")) is None
    assert await FIRELY.hard_delete(client, ("Observation", "o2")) == "$erase answered 403"


async def test_a_generic_server_has_no_hard_delete(client: FhirClient) -> None:
    assert await GENERIC.hard_delete(client, ("Observation", "o1")) == "this upstream offers no hard delete"
