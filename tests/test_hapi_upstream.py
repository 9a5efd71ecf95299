"""Smoke tests of the real HAPI FHIR JPA upstream (upstreams/hapi) itself.

They pin down the HAPI behaviour the proxy is built against — referential
integrity, transactions, $expunge, cascading deletes, lenient/strict search and
links behind a proxy — so that a HAPI upgrade that changes it fails here first.
The ``hapi_base`` fixture (tests/conftest.py) starts one server per test run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.hapi

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def fhir(hapi_base: str) -> Iterator[httpx.Client]:
    """One HTTP client for the module; FHIR JSON both ways."""
    with httpx.Client(
        base_url=hapi_base,
        headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
        timeout=60.0,
    ) as client:
        yield client


def _tag() -> str:
    """A unique value so tests sharing one server never see each other's data."""
    return uuid.uuid4().hex


def create(fhir: httpx.Client, resource: dict[str, Any]) -> str:
    """POST a resource and return its server-assigned id."""
    resp = fhir.post(f"/{resource['resourceType']}", json=resource)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def patient(family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}]}


def observation(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "smoke"},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def diagnostics(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return " | ".join(issue.get("diagnostics", "") for issue in outcome["issue"])


def link(bundle: dict[str, Any], relation: str) -> str | None:
    for entry in bundle.get("link", []):
        if entry["relation"] == relation:
            return str(entry["url"])
    return None


def test_metadata_lists_destructive_operations(fhir: httpx.Client) -> None:
    resp = fhir.get("/metadata")
    assert resp.status_code == 200
    rest = resp.json()["rest"][0]
    system_ops = {op["name"] for op in rest.get("operation", [])}
    assert {"expunge", "delete-expunge"} <= system_ops
    patient_ops = next(r for r in rest["resource"] if r["type"] == "Patient").get("operation", [])
    assert "expunge" in {op["name"] for op in patient_ops}


def test_delete_of_referenced_patient_conflicts_then_transaction_deletes_both(fhir: httpx.Client) -> None:
    pid = create(fhir, patient(_tag()))
    oid = create(fhir, observation(pid))

    resp = fhir.delete(f"/Patient/{pid}")
    assert resp.status_code == 409
    # HAPI: "Unable to delete Patient/<pid> because at least one resource has a reference
    # to this resource. First reference found was resource Observation/<oid> in path
    # Observation.subject", plus an informational issue suggesting _cascade=delete.
    text = diagnostics(resp.json())
    assert f"Unable to delete Patient/{pid}" in text
    assert f"Observation/{oid}" in text
    assert "_cascade=delete" in text

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
            {"request": {"method": "DELETE", "url": f"Observation/{oid}"}},
        ],
    }
    resp = fhir.post("", json=bundle)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["204 No Content"] * 2

    assert fhir.get(f"/Patient/{pid}").status_code == 410
    assert fhir.get(f"/Observation/{oid}").status_code == 410


def test_instance_expunge_removes_history(fhir: httpx.Client) -> None:
    pid = create(fhir, patient(_tag()))
    assert fhir.put(f"/Patient/{pid}", json={**patient("v2"), "id": pid}).status_code == 200
    assert fhir.delete(f"/Patient/{pid}").status_code == 200
    history = fhir.get(f"/Patient/{pid}/_history")
    assert history.status_code == 200
    assert len(history.json()["entry"]) == 3

    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "expungeDeletedResources", "valueBoolean": True},
            {"name": "expungePreviousVersions", "valueBoolean": True},
        ],
    }
    resp = fhir.post(f"/Patient/{pid}/$expunge", json=params)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["resourceType"] == "Parameters"
    assert out["parameter"][0]["name"] == "count"

    # After expunge HAPI no longer knows the id at all: 404 (not 410, not an empty bundle).
    resp = fhir.get(f"/Patient/{pid}/_history")
    assert resp.status_code == 404
    assert "HAPI-2001" in diagnostics(resp.json())
    assert fhir.get(f"/Patient/{pid}").status_code == 404


def test_cascade_delete_removes_referencing_resources(fhir: httpx.Client) -> None:
    pid = create(fhir, patient(_tag()))
    oid = create(fhir, observation(pid))
    resp = fhir.delete(f"/Patient/{pid}", params={"_cascade": "delete"})
    assert resp.status_code == 200, resp.text
    assert fhir.get(f"/Patient/{pid}").status_code == 410
    assert fhir.get(f"/Observation/{oid}").status_code == 410

    # The same through the X-Cascade header.
    pid = create(fhir, patient(_tag()))
    oid = create(fhir, observation(pid))
    resp = fhir.delete(f"/Patient/{pid}", headers={"X-Cascade": "delete"})
    assert resp.status_code == 200, resp.text
    assert fhir.get(f"/Observation/{oid}").status_code == 410


def test_conditional_delete_of_several_matches_is_allowed(fhir: httpx.Client) -> None:
    family = _tag()
    ids = [create(fhir, patient(family)) for _ in range(2)]
    resp = fhir.delete("/Patient", params={"family": family})
    assert resp.status_code == 200, resp.text
    assert all(fhir.get(f"/Patient/{i}").status_code == 410 for i in ids)


def test_unknown_search_parameter_lenient_by_default_strict_on_request(fhir: httpx.Client) -> None:
    resp = fhir.get("/Patient", params={"no-such-param": "x"})
    assert resp.status_code == 200
    assert resp.json()["resourceType"] == "Bundle"
    # The ignored parameter is dropped from the self link.
    assert "no-such-param" not in (link(resp.json(), "self") or "")

    resp = fhir.get("/Patient", params={"no-such-param": "x"}, headers={"Prefer": "handling=strict"})
    assert resp.status_code == 400
    assert "Unknown search parameter" in diagnostics(resp.json())


def test_search_is_paged_with_next_links(fhir: httpx.Client) -> None:
    family = _tag()
    batch = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient(family), "request": {"method": "POST", "url": "Patient"}} for _ in range(25)],
    }
    assert fhir.post("", json=batch).status_code == 200

    first = fhir.get("/Patient", params={"family": family}).json()
    assert len(first["entry"]) == 20  # default page size
    next_url = link(first, "next")
    assert next_url is not None
    second = fhir.get(next_url).json()
    assert len(second["entry"]) == 5
    assert link(second, "next") is None


def test_links_follow_x_forwarded_headers(fhir: httpx.Client, hapi_base: str) -> None:
    family = _tag()
    for _ in range(3):
        create(fhir, patient(family))
    forwarded = {
        "X-Forwarded-Host": "proxy.example:8443",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/gateway/fhir",
    }
    resp = fhir.get("/Patient", params={"family": family, "_count": 2}, headers=forwarded)
    assert resp.status_code == 200
    bundle = resp.json()
    # X-Forwarded-Prefix replaces the servlet path (/fhir): it is the whole public base path.
    public = "https://proxy.example:8443/gateway/fhir"
    assert (link(bundle, "self") or "").startswith(f"{public}/Patient?")
    assert (link(bundle, "next") or "").startswith(f"{public}?_getpages=")
    assert all(e["fullUrl"].startswith(f"{public}/Patient/") for e in bundle["entry"])

    # Without a prefix the server's own path is kept.
    resp = fhir.get(
        "/Patient",
        params={"family": family},
        headers={"X-Forwarded-Host": "proxy.example", "X-Forwarded-Proto": "https"},
    )
    assert (link(resp.json(), "self") or "").startswith("https://proxy.example/fhir/Patient?")

    # Without forwarded headers links point at the server itself.
    resp = fhir.get("/Patient", params={"family": family})
    assert (link(resp.json(), "self") or "").startswith(f"{hapi_base}/Patient?")
