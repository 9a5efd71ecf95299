"""HAPI FHIR JPA: detection, its instance $expunge and the 409 that names a blocker.

The real server runs in the purge and vendor-operation suites; this file pins the shapes.
"""

from __future__ import annotations

import json

import pytest
import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


@pytest.mark.parametrize(("document", "name"), [
    (statement("HAPI FHIR Server", "expunge"), "hapi"),
    (statement("Smile CDR", "expunge"), "hapi"),
    (statement("HAPI FHIR Server"), "generic"),  # expunge disabled: soft delete only
])
def test_detection(document: dict, name: str) -> None:
    assert detect(document).name == name


@respx.mock
async def test_expunges_deleted_resources_and_previous_versions(client: FhirClient) -> None:
    route = respx.post(f"{BASE}/Observation/o1/$expunge").respond(200, json={"resourceType": "Parameters"})
    assert await kind_named("hapi").hard_delete(client, ("Observation", "o1")) is None
    sent = json.loads(route.calls.last.request.content)
    assert {p["name"]: p["valueBoolean"] for p in sent["parameter"]} == {
        "expungeDeletedResources": True, "expungePreviousVersions": True}


def test_a_conflict_names_the_blocked_resource_and_its_referrer() -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
            "diagnostics": "HAPI-0550: Unable to delete Patient/p1 because at least one resource has a "
                           "reference to this resource. First reference found was resource Task/t9 in path Task.for"}]}
    assert kind_named("hapi").conflict(body) == (("Patient", "p1"), ("Task", "t9"))
    assert kind_named("hapi").conflict({"resourceType": "OperationOutcome", "issue": []}) is None
