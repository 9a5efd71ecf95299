"""HAPI FHIR JPA: detection, its instance $expunge and the 409 that names a blocker.

The real server runs in the purge and vendor-operation suites; this file pins the shapes.
"""

from __future__ import annotations

import json

import httpx
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


def removed(count: int) -> dict[str, object]:
    return {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": count}]}


@respx.mock
async def test_expunges_the_deleted_resource_only(client: FhirClient) -> None:
    """expungeDeletedResources alone: HAPI removes every version of a resource that is still
    deleted, and nothing of one written again since (expungePreviousVersions would take its old
    versions and keep the new one; tests/test_purge_hard_delete.py shows it on the real server)."""
    route = respx.post(f"{BASE}/Observation/o1/$expunge").respond(200, json=removed(3))
    assert await kind_named("hapi").hard_delete(client, ("Observation", "o1")) is None
    sent = json.loads(route.calls.last.request.content)
    assert {p["name"]: p["valueBoolean"] for p in sent["parameter"]} == {"expungeDeletedResources": True}


@respx.mock
@pytest.mark.parametrize(("history", "error"), [
    (httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "entry": [{"resource": {}}]}),
     "removed nothing: the resource is not deleted any more"),  # written again: its history is kept
    (httpx.Response(404, json={"resourceType": "OperationOutcome"}), None),  # another expunge took it
    (httpx.Response(200, json={"resourceType": "Bundle", "type": "history"}), None),
    (httpx.Response(500, json={"resourceType": "OperationOutcome"}), "removed nothing"),  # unknown: failed
])
async def test_an_expunge_that_removed_nothing_reads_the_history(client: FhirClient, history: httpx.Response,
                                                                 error: str | None) -> None:
    """A count of 0 is a failed hard delete only while a history is still served: two children of
    one cohort purge expunge a resource both deleted, and the second finds nothing (CI, HAPI)."""
    respx.post(f"{BASE}/Observation/o1/$expunge").respond(200, json=removed(0))
    respx.get(f"{BASE}/Observation/o1/_history").mock(return_value=history)
    answer = await kind_named("hapi").hard_delete(client, ("Observation", "o1"))
    assert answer == error if error is None else error in str(answer)


@respx.mock
@pytest.mark.parametrize(("status", "body", "error"), [
    (200, removed(0), "removed nothing: the resource is not deleted any more"),  # its history still served (below)
    (200, {"resourceType": "Parameters"}, None),  # no count: the history read-back decides
    (404, {"resourceType": "OperationOutcome"}, None),  # already expunged
    (500, {"resourceType": "OperationOutcome"}, "$expunge answered 500"),
])
async def test_what_the_expunge_answer_means(client: FhirClient, status: int, body: dict[str, object],
                                             error: str | None) -> None:
    respx.post(f"{BASE}/Observation/o1/$expunge").respond(status, json=body)
    respx.get(f"{BASE}/Observation/o1/_history").respond(
        200, json={"resourceType": "Bundle", "type": "history", "entry": [{"resource": {}}]})
    answer = await kind_named("hapi").hard_delete(client, ("Observation", "o1"))
    assert answer == error if error is None else error in str(answer)


def test_a_conflict_names_the_blocked_resource_and_its_referrer() -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
            "diagnostics": "HAPI-0550: Unable to delete Patient/p1 because at least one resource has a "
                           "reference to this resource. First reference found was resource Task/t9 in path Task.for"}]}
    assert kind_named("hapi").conflict(body) == (("Patient", "p1"), ("Task", "t9"))
    assert kind_named("hapi").conflict({"resourceType": "OperationOutcome", "issue": []}) is None
