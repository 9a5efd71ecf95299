"""Every malformed or unauthorized ``$purge`` gets its status and OperationOutcome, and nothing
is written upstream (respx records every upstream call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from tests.fake_upstream import BASE, scripted_upstream, upstream_calls, writes

TOKEN = "requests-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


def params(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parameters)}


def compartment(*resources: dict[str, Any], code: str = "Patient") -> dict[str, Any]:
    definition = {"resourceType": "CompartmentDefinition", "code": code, "status": "active",
                  "search": True, "resource": list(resources)}
    return params({"name": "compartmentDefinition", "resource": definition})


BAD = [
    # (id, path, headers, body, status, issue code, text fragment)
    ("no-token", "Patient/p1/$purge", {}, None, 401, "login", "bearer token is required"),
    ("wrong-token", "Patient/p1/$purge", {"Authorization": "Bearer nope"}, None, 403, "forbidden", "may not run"),
    ("basic-auth", "Patient/p1/$purge", {"Authorization": "Basic dXNlcjpwYXNz"}, None, 401, "login", "bearer"),
    ("bad-id", "Patient/p1!x/$purge", AUTH, None, 400, "invalid", "FHIR id rule"),
    ("long-id", f"Patient/{'a' * 65}/$purge", AUTH, None, 400, "invalid", "FHIR id rule"),
    ("empty-object", "Patient/p1/$purge", AUTH, {}, 422, "invalid", "must be a Parameters resource"),
    ("not-parameters", "Patient/p1/$purge", AUTH, {"resourceType": "Patient"}, 422, "invalid", "Parameters"),
    ("not-json", "Patient/p1/$purge", AUTH, b"{nope", 400, "structure", "not valid JSON"),
    ("wrong-content-type", "Patient/p1/$purge", {**AUTH, "Content-Type": "text/plain"}, b"hello", 415, "not-supported", "application/fhir+json"),
    ("unknown-parameter", "Patient/p1/$purge", AUTH, params({"name": "everything", "valueBoolean": True}), 400, "not-supported", "unknown parameter 'everything'"),
    ("parameter-not-list", "Patient/p1/$purge", AUTH, {"resourceType": "Parameters", "parameter": {}}, 400, "structure", "must be a list"),
    ("unknown-query", "Patient/p1/$purge?cascade=true", AUTH, None, 400, "not-supported", "unknown parameter 'cascade'"),
    ("bad-dry-run", "Patient/p1/$purge?dryRun=maybe", AUTH, None, 400, "invalid", "dryRun must be"),
    ("dry-run-conflict", "Patient/p1/$purge?dryRun=true", AUTH, params({"name": "dryRun", "valueBoolean": False}), 400, "invalid", "different values"),
    ("dry-run-wrong-type", "Patient/p1/$purge", AUTH, params({"name": "dryRun", "valueString": "yes"}), 400, "invalid", "wrong type"),
    ("compartment-code", "Patient/p1/$purge", AUTH, compartment({"code": "Observation", "param": ["subject"]}, code="Encounter"), 422, "invalid", "code must be 'Patient'"),
    ("compartment-empty", "Patient/p1/$purge", AUTH, compartment(), 422, "invalid", "at least one resource"),
    ("compartment-no-params", "Patient/p1/$purge", AUTH, compartment({"code": "Observation", "param": []}), 422, "invalid", "at least one resource"),
    ("compartment-unknown-type", "Patient/p1/$purge", AUTH, compartment({"code": "Bogus", "param": ["subject"]}), 422, "invalid", "'Bogus' is not a FHIR 4.0.1 resource type"),
    ("compartment-token-param", "Patient/p1/$purge", AUTH, compartment({"code": "Observation", "param": ["code"]}), 422, "invalid", "'code' is not a reference search parameter of Observation"),
    ("compartment-unknown-param", "Patient/p1/$purge", AUTH, compartment({"code": "Observation", "param": ["owner"]}), 422, "invalid", "'owner' is not a reference"),
    ("compartment-wrong-resource", "Patient/p1/$purge", AUTH, params({"name": "compartmentDefinition", "resource": {"resourceType": "Patient"}}), 422, "invalid", "must be a CompartmentDefinition"),
    ("remove-references-bad-value", "Patient/p1/$purge?_remove-references=yes", AUTH, None, 400, "invalid", "_remove-references must be"),
    ("remove-references-repeated", "Patient/p1/$purge?_remove-references=true&_remove-references=true", AUTH, None, 400, "invalid", "repeated"),
    ("remove-references-wrong-type", "Patient/p1/$purge", AUTH, params({"name": "_remove-references", "valueString": "true"}), 400, "invalid", "wrong type"),
    ("remove-references-disagree", "Patient/p1/$purge?_remove-references=false", AUTH, params({"name": "_remove-references", "valueBoolean": True}), 400, "invalid", "given twice"),
]


@pytest.mark.parametrize(("path", "headers", "body", "status", "code", "text"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
async def test_bad_requests_are_refused_without_upstream_writes(
    make_proxy, upstream, path, headers, body, status, code, text
) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    sent = {**(JSON if content is not None else {}), **headers}
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/{path}", content=content, headers=sent)
    outcome = answer.json()
    assert answer.status_code == status
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code
    assert text in outcome["issue"][0]["diagnostics"]
    assert writes(upstream) == []
    if status in (401, 403):
        assert upstream_calls(upstream) == []  # not even a read for an unauthorized caller


async def test_oversized_bodies_are_refused_with_413(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN}, purge={"max_body_bytes": 2048})
    body = json.dumps(params({"name": "dryRun", "valueBoolean": True}) | {"padding": "x" * 4096})
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", content=body, headers={**AUTH, **JSON})
    assert answer.status_code == 413 and answer.json()["issue"][0]["code"] == "too-costly"
    assert writes(upstream) == []


async def test_without_a_configured_token_destructive_operations_are_disabled(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE)
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403
    assert "no operator token or other authorization policy" in answer.json()["issue"][0]["diagnostics"]
    assert upstream_calls(upstream) == []


async def test_hard_delete_required_but_unavailable_is_refused_before_deleting(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN}, purge={"hard_delete": "require"})
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["issue"][0]["code"] == "not-supported"
    assert writes(upstream) == []
