"""Every malformed, unauthorized or unsupported vendor-shaped request ($erase, $expunge, cascade,
delete-expunge, Group $purge, $bulk-purge, $bulk-delete) gets its status and OperationOutcome, and nothing is written upstream (respx
records every upstream call; the scripted upstream is a ``generic`` server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from tests.fake_upstream import BASE, scripted_upstream, upstream_calls, writes

TOKEN = "vendor-requests-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


def params(**values: Any) -> dict[str, Any]:
    kinds = {bool: "valueBoolean", int: "valueInteger", str: "valueString"}
    return {"resourceType": "Parameters",
            "parameter": [{"name": k, kinds[type(v)]: v} for k, v in values.items()]}


def patients(*ids: str) -> dict[str, Any]:
    """Kodjin's bulk purge body: one ``patientId`` per patient."""
    return {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": i} for i in ids]}


ASYNC = {**AUTH, "Prefer": "respond-async"}
BAD = [
    # (id, method, path, headers, body, status, issue code, text fragment)
    ("erase-no-token", "POST", "Observation/o1/$erase", {}, None, 401, "login", "bearer token"),
    ("expunge-wrong-token", "POST", "$expunge", {"Authorization": "Bearer nope"}, None, 403, "forbidden", ""),
    ("cascade-no-token", "DELETE", "Patient/p1?_cascade=delete", {}, None, 401, "login", "bearer token"),
    ("delete-expunge-no-token", "DELETE", "Observation?code=x&_expunge=true", {}, None, 401, "login", "bearer"),
    ("erase-bad-id", "POST", "Observation/o1!x/$erase", AUTH, None, 400, "invalid", "FHIR id rule"),
    ("erase-bad-type", "POST", "Bogus/o1/$erase", AUTH, None, 400, "invalid", "'Bogus' is not a resource type"),
    ("erase-unknown-query", "POST", "Observation/o1/$erase?cascade=true", AUTH, None, 400, "not-supported", "unknown parameter 'cascade'"),
    ("erase-audit-event", "POST", "AuditEvent/a1/$erase", AUTH, None, 422, "business-rule", "audit trail"),
    ("expunge-unknown-parameter", "POST", "Observation/o1/$expunge", AUTH, params(bogus=True), 400, "not-supported", "unknown parameter 'bogus'"),
    ("expunge-wrong-type", "POST", "Observation/$expunge", AUTH, params(limit="ten"), 400, "invalid", "wrong type"),
    ("expunge-nothing-selected", "POST", "Observation/$expunge", AUTH, params(limit=5), 400, "required", "nothing to expunge"),
    ("expunge-type-level-generic", "POST", "Observation/$expunge", AUTH, params(expungeDeletedResources=True), 422, "not-supported", "no type-level $expunge"),
    ("expunge-system-level-generic", "POST", "$expunge", AUTH, params(expungePreviousVersions=True), 422, "not-supported", "no system-level $expunge"),
    ("expunge-everything-off", "POST", "$expunge", AUTH, params(expungeEverything=True), 403, "forbidden", "expunge.allow_everything"),
    ("expunge-everything-at-type-level", "POST", "Observation/$expunge", AUTH, params(expungeEverything=True), 400, "invalid", "only valid at system level"),
    ("expunge-everything-not-patient", "POST", "Observation/o1/$expunge?everything=true", AUTH, None, 422, "not-supported", "Patient compartment only"),
    ("expunge-version-generic", "POST", "Observation/mine/_history/1/$expunge", AUTH, None, 404, "not-found", "no version 1"),
    ("cascade-bad-mode", "DELETE", "Patient/p1?_cascade=yes", AUTH, None, 400, "invalid", "only cascade mode"),
    ("cascade-bad-header", "DELETE", "Patient/p1", {**AUTH, "X-Cascade": "all"}, None, 400, "invalid", "only cascade mode"),
    ("cascade-unknown-query", "DELETE", "Patient/p1?_cascade=delete&_foo=1", AUTH, None, 400, "not-supported", "unknown parameter '_foo'"),
    ("cascade-conditional", "DELETE", "Observation?code=x&_cascade=delete", AUTH, None, 422, "not-supported", "cascading conditional"),
    ("instance-delete-expunge", "DELETE", "Observation/o1?_expunge=true", AUTH, None, 422, "not-supported", "$erase"),
    ("delete-expunge-no-url", "POST", "$delete-expunge", AUTH, params(dryRun=True), 400, "required", "url"),
    ("delete-expunge-absolute-url", "POST", "$delete-expunge", AUTH, params(url="http://elsewhere/Observation?code=x"), 400, "invalid", "relative search"),
    ("delete-expunge-bad-type", "POST", "$delete-expunge", AUTH, params(url="Bogus?code=x"), 400, "invalid", "'Bogus' is not a resource type"),
    ("delete-expunge-result-param", "POST", "$delete-expunge", AUTH, params(url="Observation?_count=5"), 400, "invalid", "shapes search results"),
    ("delete-expunge-audit-event", "DELETE", "AuditEvent?code=x&_expunge=true", AUTH, None, 422, "business-rule", "audit trail"),
    ("delete-expunge-no-criteria", "DELETE", "Observation?_expunge=true", AUTH, None, 422, "business-rule", "without criteria"),
    ("delete-expunge-bad-flag", "DELETE", "Observation?code=x&_expunge=maybe", AUTH, None, 400, "invalid", "_expunge must be"),
    ("bulk-purge-no-token", "POST", "Patient/$bulk-purge", {"Prefer": "respond-async"}, patients("p1"), 401, "login", "bearer"),
    ("bulk-purge-sync", "POST", "Patient/$bulk-purge", AUTH, patients("p1"), 400, "not-supported", "Prefer: respond-async"),
    ("bulk-purge-bad-id", "POST", "Patient/$bulk-purge", ASYNC, patients("p1", "p!2"), 400, "invalid", "patientId number 2"),
    ("bulk-purge-none", "POST", "Patient/$bulk-purge", ASYNC, params(confirm=True), 422, "business-rule", "names no patient"),
    ("bulk-purge-too-many", "POST", "Patient/$bulk-purge", ASYNC, patients(*(f"p{i}" for i in range(11))), 422, "business-rule", "max_patients_without_confirm (10)"),
    ("bulk-purge-unknown-parameter", "POST", "Patient/$bulk-purge", ASYNC, params(patient="p1"), 400, "not-supported", "unknown parameter 'patient'"),
    ("bulk-purge-wrong-type", "POST", "Patient/$bulk-purge", ASYNC, params(patientId=5), 400, "invalid", "wrong type"),
    ("bulk-purge-bad-confirm", "POST", "Patient/$bulk-purge?confirm=yes", ASYNC, patients("p1"), 400, "invalid", "confirm must be"),
    ("group-purge-no-token", "POST", "Group/g1/$purge", {"Prefer": "respond-async"}, None, 401, "login", "bearer"),
    ("group-purge-bad-id", "POST", "Group/g!1/$purge", ASYNC, None, 400, "invalid", "FHIR id rule"),
    ("group-purge-sync", "POST", "Group/g1/$purge", AUTH, None, 400, "not-supported", "Prefer: respond-async"),
    ("group-purge-unknown-query", "POST", "Group/g1/$purge?patientId=p1", ASYNC, None, 400, "not-supported", "unknown parameter 'patientId'"),
    ("group-purge-wrong-path", "POST", "Group/$purge", ASYNC, None, 400, "invalid", "$purge is carried out"),
    ("bulk-delete-no-token", "DELETE", "Observation/$bulk-delete?_id=o1", {"Prefer": "respond-async"}, None, 401, "login", "bearer"),
    ("bulk-delete-sync", "DELETE", "Observation/$bulk-delete?_id=o1", AUTH, None, 400, "not-supported", "Prefer: respond-async"),
    ("bulk-delete-unknown-criterion", "DELETE", "Observation/$bulk-delete?bogus=1", ASYNC, None, 400, "not-supported", "'bogus' is not a search parameter of Observation"),
    ("bulk-delete-result-param", "DELETE", "Observation/$bulk-delete?_id=o1&_count=5", ASYNC, None, 400, "not-supported", "shapes search results"),
    ("bulk-delete-revinclude", "DELETE", "Patient/$bulk-delete?_id=p1&_revinclude=*:*", ASYNC, None, 400, "not-supported", "shapes search results"),
    ("bulk-delete-empty-criterion", "DELETE", "Observation/$bulk-delete?_id=", ASYNC, None, 400, "invalid", "has no value"),
    ("bulk-delete-bad-type", "DELETE", "Bogus/$bulk-delete?_id=o1", ASYNC, None, 400, "invalid", "'Bogus' is not a resource type"),
    ("bulk-delete-audit-event", "DELETE", "AuditEvent/$bulk-delete?_id=a1", ASYNC, None, 422, "business-rule", "audit trail"),
    ("bulk-delete-bad-excluded", "DELETE", "$bulk-delete?_id=o1&excludedResourceTypes=Observation,Bogus", ASYNC, None, 400, "invalid", "'Bogus' is not a resource type"),
    ("bulk-delete-excludes-itself", "DELETE", "Observation/$bulk-delete?_id=o1&excludedResourceTypes=Observation", ASYNC, None, 400, "invalid", "excludes Observation"),
    ("bulk-delete-bad-hard", "DELETE", "Observation/$bulk-delete?_id=o1&_hardDelete=yes", ASYNC, None, 400, "invalid", "_hardDelete must be"),
    ("bulk-delete-hard-disagree", "DELETE", "Observation/$bulk-delete?_id=o1&_hardDelete=true&hardDelete=false", ASYNC, None, 400, "invalid", "different values"),
    ("bulk-delete-purge-history-soft", "DELETE", "Observation/$bulk-delete?_id=o1&_purgeHistory=true", ASYNC, None, 422, "not-supported", "_purgeHistory"),
    ("bulk-delete-hard-generic", "DELETE", "Observation/$bulk-delete?_id=o1&_hardDelete=true", ASYNC, None, 422, "not-supported", "no hard delete"),
    ("bulk-delete-everything-off", "DELETE", "$bulk-delete", ASYNC, None, 403, "forbidden", "expunge.allow_everything"),
    ("bulk-delete-type-unconfirmed", "DELETE", "Observation/$bulk-delete", ASYNC, None, 422, "business-rule", "confirm=true"),
    ("bulk-delete-bad-remove-references", "DELETE", "Observation/$bulk-delete?_id=o1&_remove-references=1", ASYNC, None, 400, "invalid", "_remove-references must be"),
    ("bulk-delete-post", "POST", "Observation/$bulk-delete?_id=o1", ASYNC, None, 405, "not-supported", "accepts DELETE"),
    ("group-purge-bad-remove-references", "POST", "Group/g1/$purge?_remove-references=maybe", ASYNC, None, 400, "invalid", "_remove-references must be"),
    ("group-purge-remove-references-wrong-type", "POST", "Group/g1/$purge", ASYNC, params(**{"_remove-references": "true"}), 400, "invalid", "wrong type"),
    ("group-purge-bad-confirm", "POST", "Group/g1/$purge?confirm=yes", ASYNC, None, 400, "invalid", "confirm must be"),
    ("group-purge-bad-dry-run", "POST", "Group/g1/$purge?dryRun=1", ASYNC, None, 400, "invalid", "dryRun must be"),
    ("group-purge-unknown-parameter", "POST", "Group/g1/$purge", ASYNC, params(patientId="p1"), 400, "not-supported", "unknown parameter 'patientId'"),
    ("group-purge-bad-compartment", "POST", "Group/g1/$purge", ASYNC, {"resourceType": "Parameters", "parameter": [{"name": "compartmentDefinition", "resource": {"resourceType": "CompartmentDefinition", "code": "Device", "resource": [{"code": "Observation", "param": ["subject"]}]}}]}, 422, "invalid", "code must be 'Patient'"),
    ("bulk-purge-bad-remove-references", "POST", "Patient/$bulk-purge?_remove-references=maybe", ASYNC, patients("p1"), 400, "invalid", "_remove-references must be"),
    ("bulk-purge-remove-references-wrong-type", "POST", "Patient/$bulk-purge", ASYNC, {**patients("p1"), "parameter": [*patients("p1")["parameter"], {"name": "_remove-references", "valueString": "yes"}]}, 400, "invalid", "wrong type"),
    ("bulk-purge-bad-dry-run", "POST", "Patient/$bulk-purge?dryRun=maybe", ASYNC, patients("p1"), 400, "invalid", "dryRun must be"),
    ("bulk-purge-empty-id", "POST", "Patient/$bulk-purge", ASYNC, patients("p1", ""), 400, "invalid", "'patientId' has the wrong type"),
    ("bulk-purge-reference-not-id", "POST", "Patient/$bulk-purge", ASYNC, patients("Patient/p1"), 400, "invalid", "patientId number 1"),
    ("bulk-purge-not-parameters", "POST", "Patient/$bulk-purge", ASYNC, {"resourceType": "Patient", "id": "p1"}, 422, "invalid", "must be a Parameters resource"),
    ("bulk-purge-too-many-ids-repeated", "POST", "Patient/$bulk-purge", ASYNC, patients(*(f"p{i}" for i in range(11)), "p0"), 422, "business-rule", "max_patients_without_confirm (10)"),
    ("bulk-delete-bad-purge-history", "DELETE", "Observation/$bulk-delete?_id=o1&_hardDelete=true&_purgeHistory=yes", ASYNC, None, 400, "invalid", "_purgeHistory must be"),
    ("bulk-delete-bad-hard-microsoft-name", "DELETE", "Observation/$bulk-delete?_id=o1&hardDelete=1", ASYNC, None, 400, "invalid", "_hardDelete must be"),
    ("bulk-delete-bad-confirm", "DELETE", "Observation/$bulk-delete?confirm=maybe", ASYNC, None, 400, "invalid", "confirm must be"),
    ("bulk-delete-empty-excluded", "DELETE", "$bulk-delete?_id=o1&excludedResourceTypes=", ASYNC, None, 400, "invalid", "excludedResourceTypes"),
    ("bulk-delete-excluded-lowercase", "DELETE", "$bulk-delete?_id=o1&excludedResourceTypes=observation", ASYNC, None, 400, "invalid", "'observation' is not a resource type"),
    ("bulk-delete-system-unknown-criterion", "DELETE", "$bulk-delete?bogus=1", ASYNC, None, 400, "not-supported", "takes the criteria bogus;"),
    ("bulk-delete-unknown-modifier-base", "DELETE", "Observation/$bulk-delete?bogus:exact=1", ASYNC, None, 400, "not-supported", "'bogus:exact' is not a search parameter"),
    ("bulk-delete-bad-id-in-status", "GET", "_operations/bulk-delete/nope", AUTH, None, 404, "not-found", "no such job"),
    ("bulk-delete-system-post", "POST", "$bulk-delete?_id=o1", ASYNC, None, 405, "not-supported", "accepts DELETE"),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code", "text"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
async def test_bad_requests_are_refused_without_upstream_writes(
    make_proxy, upstream, method, path, headers, body, status, code, text
) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    content = json.dumps(body).encode() if body is not None else None
    sent = {**({"Content-Type": "application/fhir+json"} if content else {}), **headers}
    async with httpx.AsyncClient() as http:
        answer = await http.request(method, f"{proxy}/{path}", content=content, headers=sent)
    outcome = answer.json()
    assert answer.status_code == status, outcome
    assert outcome["issue"][0]["code"] == code
    assert text in outcome["issue"][0]["diagnostics"]
    assert writes(upstream) == []
    if status in (401, 403) and code != "forbidden" or "Bearer nope" in str(headers):
        assert upstream_calls(upstream) == []  # not even a read for an unauthorized caller


async def test_a_soft_deleting_upstream_is_reported_not_faked(make_proxy, upstream) -> None:
    """The scripted upstream still serves history after DELETE: $erase says so (incomplete)."""
    history = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Observation", "id": "mine"}}]}
    for route in upstream.routes:  # the scripted upstream answers every _history with 404: not here
        if "_history" in repr(route.pattern):
            route.mock(return_value=httpx.Response(200, json=history))
    upstream.get(f"{BASE}/Observation/mine").mock(side_effect=[
        httpx.Response(200, json={"resourceType": "Observation", "id": "mine"}),
        httpx.Response(410, json={"resourceType": "OperationOutcome", "issue": []})])
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Observation/mine/$erase", headers=AUTH)
    outcome = answer.json()
    assert answer.status_code == 200 and outcome["issue"][0]["code"] == "incomplete", outcome
    assert any(i["code"] == "not-supported" and "history was not removed" in i["diagnostics"] for i in outcome["issue"])


async def test_a_cascade_whose_target_cannot_be_read_deletes_nothing(make_proxy, upstream) -> None:
    """A 500 on the target is an unknown state, not "already gone": its referrers stay."""
    upstream.get(f"{BASE}/Patient/p1").respond(500, json={"resourceType": "OperationOutcome", "issue": []})
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        answer = await http.delete(f"{proxy}/Patient/p1?_cascade=delete&_confirm=true", headers=AUTH)
    outcome = answer.json()
    assert answer.status_code == 502, outcome
    assert "reading Patient/p1 answered 500" in outcome["issue"][0]["diagnostics"]
    assert writes(upstream) == []


@pytest.mark.parametrize(("members", "status", "code", "text"), [
    (None, 404, "not-found", "Group/g1 was not found"),
    ([f"Patient/p{i}" for i in range(11)], 422, "business-rule", "names 11 patients"),
    (["Device/d1"], 422, "business-rule", "names no patient"),
])
async def test_a_group_purge_is_refused_on_what_the_group_holds(make_proxy, upstream, members, status, code, text) -> None:
    """The Group is read at kick-off: missing, too large without confirm=true, or without a
    patient member, the request is refused and no job is stored, nothing written."""
    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
             "member": [{"entity": {"reference": m}} for m in members or []]}
    route = upstream.get(f"{BASE}/Group/g1")
    route.respond(404, json={"resourceType": "OperationOutcome", "issue": []}) if members is None else route.respond(200, json=group)
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{proxy}/Group/g1/$purge", headers=ASYNC)
    outcome = answer.json()
    assert answer.status_code == status, outcome
    assert outcome["issue"][0]["code"] == code and text in outcome["issue"][0]["diagnostics"]
    assert writes(upstream) == []
