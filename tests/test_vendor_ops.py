"""Firely ``$erase``, Medplum/HAPI ``$expunge``, cascading delete and delete-expunge against the
real upstreams: what goes, what stays, and what each upstream kind cannot do (refused, nothing
written)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests import seed as seeds
from tests.helpers import AUTH, TOKEN, until_done
from tests.seed import ref

FHIR = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


async def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=300) as http:
        answer = await http.request(method, url, json=body, headers={**AUTH, **(headers or {})})
    return answer.status_code, answer.json()


def texts(document: dict[str, Any]) -> str:
    if document.get("resourceType") == "Parameters":
        document = next(p["resource"] for p in document["parameter"] if p["name"] == "outcome")
    return "\n".join(issue["diagnostics"] for issue in document["issue"])


def first_code(document: dict[str, Any]) -> str:
    if document.get("resourceType") == "Parameters":
        document = next(p["resource"] for p in document["parameter"] if p["name"] == "outcome")
    return document["issue"][0]["code"]


def hapi_params(**flags: Any) -> dict[str, Any]:
    names = {"deleted": "expungeDeletedResources", "previous": "expungePreviousVersions",
             "everything": "expungeEverything"}
    listed = [{"name": names[k], "valueBoolean": v} for k, v in flags.items() if k in names]
    if "limit" in flags:
        listed.append({"name": "limit", "valueInteger": flags["limit"]})
    return {"resourceType": "Parameters", "parameter": listed}


def put(base: str, *resources: dict[str, Any]) -> None:
    seeds.write(base, list(resources))


def status_of(base: str, path: str) -> int:
    return httpx.get(f"{base}/{path}", headers=FHIR).status_code


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Vendor"}]}


def observation(oid: str, subject: str | None, **extra: Any) -> dict[str, Any]:
    """``subject`` None: no reference at all (HAPI refuses references to missing resources)."""
    linked = {"subject": {"reference": subject}} if subject else {}
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            **linked, **extra}


# --- $erase -----------------------------------------------------------------------------------

async def test_erase_removes_the_resource_and_its_history(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, patient(f"{tag}-p"), observation(f"{tag}-o", f"Patient/{tag}-p"), observation(f"{tag}-keep", f"Patient/{tag}-p"))
    put(base, observation(f"{tag}-o", f"Patient/{tag}-p", valueString="v2"))  # a second version

    status, plan = await call("POST", f"{proxy}/Observation/{tag}-o/$erase?dryRun=true")
    assert status == 200 and plan["issue"][0]["code"] == "informational", texts(plan)
    assert status_of(base, f"Observation/{tag}-o") == 200

    status, outcome = await call("POST", f"{proxy}/Observation/{tag}-o/$erase")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert status_of(base, f"Observation/{tag}-o") in (404, 410)
    assert status_of(base, f"Observation/{tag}-o/_history") in (404, 410)
    assert status_of(base, f"Observation/{tag}-keep") == 200 and status_of(base, f"Patient/{tag}-p") == 200


async def test_an_erase_is_audited_as_a_purge_is(make_proxy, upstream) -> None:
    """With ``purge.audit_event`` every destructive operation, not only ``$purge``, writes an
    AuditEvent through the same audit call: subtype the operation, the target by identifier."""
    base, tag = upstream[1], seeds.new_tag()
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"audit_event": True})
    put(base, observation(f"{tag}-o", None))
    status, outcome = await call("POST", f"{proxy}/Observation/{tag}-o/$erase")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    found = httpx.get(f"{base}/AuditEvent", params={"subtype": "$erase", "_count": "1000"}, headers=FHIR).json()
    named = {"system": "urn:purgeproxy:erased-target", "value": f"Observation/{tag}-o"}
    events = [e["resource"] for e in found.get("entry") or []
              if any(entity.get("what", {}).get("identifier") == named for entity in e["resource"].get("entity", []))]
    assert len(events) == 1, found
    assert events[0]["subtype"][0]["code"] == "$erase" and events[0]["outcome"] == "0"
    assert events[0]["entity"][0]["detail"] == [{"type": "Observation", "valueString": "1"}]
    receipt = [entity for entity in events[0]["entity"][1:]  # cited by id and digest, never by its list
               if entity["what"]["identifier"]["system"] == "urn:purgeproxy:erasure-receipt"]
    assert len(receipt) == 1 and receipt[0]["what"]["identifier"]["value"] in texts(outcome)
    assert len(receipt[0]["detail"][0]["valueString"]) == 64 and receipt[0]["detail"][0]["type"] == "receipt-sha256"

async def test_erase_of_an_audit_event_is_refused(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    event = {"resourceType": "AuditEvent", "id": f"{tag}-ae", "recorded": "2024-01-01T00:00:00Z",
             "type": {"code": "rest"}, "agent": [{"requestor": True}], "source": {"observer": {"display": "t"}}}
    put(base, event)
    status, outcome = await call("POST", f"{proxy}/AuditEvent/{tag}-ae/$erase")
    assert status == 422 and outcome["issue"][0]["code"] == "business-rule", outcome
    assert status_of(base, f"AuditEvent/{tag}-ae") == 200


async def test_version_erase_removes_that_version_and_older_or_is_refused(proxy, upstream) -> None:
    kind, base, tag = *upstream, seeds.new_tag()
    oid = f"{tag}-o"
    for value in ("v1", "v2", "v3"):
        put(base, observation(oid, None, valueString=value))
    versions = [e["resource"]["meta"]["versionId"]
                for e in httpx.get(f"{base}/Observation/{oid}/_history", headers=FHIR).json()["entry"]]
    newest, middle, oldest = versions[0], versions[1], versions[2]
    status, outcome = await call("POST", f"{proxy}/Observation/{oid}/_history/{middle}/$erase")
    if kind == "medplum":  # no way to remove one version through the FHIR API: refused, untouched
        assert status == 422 and outcome["issue"][0]["code"] == "not-supported", outcome
        assert seeds.history_size(base, ("Observation", oid)) == 3
        return
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert status_of(base, f"Observation/{oid}/_history/{middle}") in (404, 410)
    assert status_of(base, f"Observation/{oid}/_history/{oldest}") in (404, 410)
    assert status_of(base, f"Observation/{oid}/_history/{newest}") == 200
    assert status_of(base, f"Observation/{oid}") == 200


async def test_version_erase_of_the_current_version_erases_everything(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, observation(f"{tag}-o", None))
    current = httpx.get(f"{base}/Observation/{tag}-o", headers=FHIR).json()["meta"]["versionId"]
    status, outcome = await call("POST", f"{proxy}/Observation/{tag}-o/_history/{current}/$erase")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert status_of(base, f"Observation/{tag}-o/_history") in (404, 410)


# --- $expunge ---------------------------------------------------------------------------------

async def test_instance_expunge_in_medplums_shape_removes_everything(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, observation(f"{tag}-o", None))
    status, outcome = await call("POST", f"{proxy}/Observation/{tag}-o/$expunge")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert status_of(base, f"Observation/{tag}-o/_history") in (404, 410)


async def test_instance_expunge_in_hapis_shape_keeps_the_current_version(proxy, upstream) -> None:
    kind, base, tag = *upstream, seeds.new_tag()
    oid = f"{tag}-o"
    for value in ("v1", "v2"):
        put(base, observation(oid, None, valueString=value))
    status, answer = await call("POST", f"{proxy}/Observation/{oid}/$expunge", hapi_params(previous=True))
    if kind == "medplum":  # the old version cannot be removed on its own
        assert status == 422 and answer["issue"][0]["code"] == "not-supported", answer
        assert "no $expunge" in texts(answer) and seeds.history_size(base, ("Observation", oid)) == 2
        return
    assert status == 200 and answer["resourceType"] == "Parameters", answer
    assert answer["parameter"][0] == {"name": "count", "valueInteger": 1}
    assert first_code(answer) == "success", texts(answer)
    assert seeds.history_size(base, ("Observation", oid)) == 1 and status_of(base, f"Observation/{oid}") == 200


async def test_instance_expunge_of_a_deleted_resource(proxy, upstream) -> None:
    kind, base, tag = *upstream, seeds.new_tag()
    put(base, observation(f"{tag}-o", None))
    assert httpx.delete(f"{base}/Observation/{tag}-o").status_code in (200, 204)
    status, answer = await call("POST", f"{proxy}/Observation/{tag}-o/$expunge", hapi_params(deleted=True))
    assert status == 200 and answer["resourceType"] == "Parameters", answer
    assert first_code(answer) == "success", texts(answer)
    if kind == "medplum":  # its DELETE already dropped the history: nothing left to expunge
        assert answer["parameter"][0]["valueInteger"] == 0
    assert status_of(base, f"Observation/{tag}-o/_history") == 404


async def test_type_and_system_expunge(make_proxy, upstream) -> None:
    kind, base, tag = *upstream, seeds.new_tag()
    # HAPI's type-level expunge walks every deleted Observation the whole suite left behind
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, upstream={"timeouts": {"read": 280}})
    put(base, observation(f"{tag}-o", None))
    assert httpx.delete(f"{base}/Observation/{tag}-o").status_code in (200, 204)
    status, answer = await call("POST", f"{proxy}/Observation/$expunge", hapi_params(deleted=True))
    if kind == "medplum":
        assert status == 422 and answer["issue"][0]["code"] == "not-supported", answer
        assert "no type-level $expunge" in texts(answer)
        status, answer = await call("POST", f"{proxy}/$expunge", hapi_params(deleted=True))
        assert status == 422 and "no system-level $expunge" in texts(answer)
        return
    assert status == 200 and answer["resourceType"] == "Parameters", answer
    assert first_code(answer) == "success", texts(answer)
    assert status_of(base, f"Observation/{tag}-o/_history") == 404
    status, answer = await call("POST", f"{proxy}/$expunge", hapi_params(previous=True, limit=10))
    assert status == 200 and answer["resourceType"] == "Parameters", answer


async def test_expunge_everything_is_off_by_default(proxy, upstream) -> None:
    status, answer = await call("POST", f"{proxy}/$expunge", hapi_params(everything=True))
    assert status == 403 and "expunge.allow_everything" in answer["issue"][0]["diagnostics"]
    status, answer = await call("POST", f"{proxy}/Observation/$expunge", hapi_params(previous=False))
    assert status == 400 and answer["issue"][0]["code"] == "required"


async def test_patient_expunge_everything_is_an_asynchronous_compartment_purge(make_proxy, upstream) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={"poll_seconds": 0.2})
    seed = seeds.build(sizes={"Observation": 5, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    before = seeds.snapshot(base, seed.untouchable)
    async with httpx.AsyncClient(timeout=60) as http:
        kicked = await http.post(f"{proxy}/Patient/{seed.patient}/$expunge?everything=true", headers=AUTH)
        assert kicked.status_code == 202, kicked.text
        done = await until_done(http, kicked.headers["Content-Location"], timeout=60)
    assert done.status_code == 200, done.text
    response = done.json()["entry"][0]["response"]
    assert response["status"].startswith("200") and response["outcome"]["issue"][0]["code"] == "success", response
    assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, seed.untouchable) == before


async def test_everything_is_for_the_patient_compartment_only(proxy, upstream) -> None:
    status, outcome = await call("POST", f"{proxy}/Observation/x1/$expunge?everything=true")
    assert status == 422 and outcome["issue"][0]["code"] == "not-supported", outcome


# --- cascading delete -------------------------------------------------------------------------

def chain(tag: str) -> list[dict[str, Any]]:
    """Patient <- Encounter <- Observation <- DiagnosticReport, plus an unrelated control."""
    return [patient(f"{tag}-p"), patient(f"{tag}-c"),
            {"resourceType": "Encounter", "id": f"{tag}-e", "status": "finished", "class": {"code": "AMB"},
             "subject": ref("Patient", f"{tag}-p")},
            observation(f"{tag}-o", f"Patient/{tag}-p", encounter=ref("Encounter", f"{tag}-e")),
            {"resourceType": "DiagnosticReport", "id": f"{tag}-dr", "status": "final", "code": {"text": "r"},
             "result": [ref("Observation", f"{tag}-o")]},
            observation(f"{tag}-co", f"Patient/{tag}-c")]


@pytest.mark.parametrize("how", ["query", "header"])
async def test_cascade_deletes_the_target_and_everything_referencing_it(proxy, upstream, how) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, *chain(tag))
    url, headers = (f"{proxy}/Patient/{tag}-p?_cascade=delete", {}) if how == "query" else \
        (f"{proxy}/Patient/{tag}-p", {"X-Cascade": "delete"})
    status, plan = await call("DELETE", url + ("&" if "?" in url else "?") + "_dryRun=true", headers=headers)
    assert status == 200 and "4 resource(s) would be deleted" in plan["issue"][0]["diagnostics"], texts(plan)
    status, outcome = await call("DELETE", url, headers=headers)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    gone = [("Patient", f"{tag}-p"), ("Encounter", f"{tag}-e"), ("Observation", f"{tag}-o"), ("DiagnosticReport", f"{tag}-dr")]
    assert seeds.present(base, gone) == []
    assert seeds.present(base, [("Patient", f"{tag}-c"), ("Observation", f"{tag}-co")]) == [
        ("Patient", f"{tag}-c"), ("Observation", f"{tag}-co")]


async def test_cascade_with_expunge_removes_history_too(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, *chain(tag))
    status, outcome = await call("DELETE", f"{proxy}/Patient/{tag}-p?_cascade=delete&_expunge=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    for path in (f"Patient/{tag}-p", f"Observation/{tag}-o", f"DiagnosticReport/{tag}-dr"):
        assert status_of(base, f"{path}/_history") == 404


async def test_cascade_beyond_its_rounds_is_refused_and_deletes_nothing(make_proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, cascade={"max_rounds": 1})
    put(base, *chain(tag))
    status, outcome = await call("DELETE", f"{proxy}/Patient/{tag}-p?_cascade=delete")
    assert status == 422 and outcome["issue"][0]["code"] == "too-costly", outcome
    assert f"DiagnosticReport/{tag}-dr references Observation/{tag}-o" in texts(outcome)
    assert len(seeds.present(base, [("Patient", f"{tag}-p"), ("Observation", f"{tag}-o")])) == 2


async def test_a_plain_delete_still_passes_through(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, observation(f"{tag}-o", None))
    async with httpx.AsyncClient() as http:
        answer = await http.delete(f"{proxy}/Observation/{tag}-o")  # no token: not ours
    assert answer.status_code in (200, 204)
    assert status_of(base, f"Observation/{tag}-o") in (404, 410)


# --- delete-expunge ---------------------------------------------------------------------------

async def test_delete_expunge_by_post_and_by_conditional_delete(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    put(base, patient(f"{tag}-p"), patient(f"{tag}-c"),
        *[observation(f"{tag}-o{i}", f"Patient/{tag}-p") for i in range(3)],
        observation(f"{tag}-co", f"Patient/{tag}-c"))
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueString": f"Observation?subject=Patient/{tag}-p"}]}
    status, plan = await call("POST", f"{proxy}/$delete-expunge?dryRun=true", body)
    assert status == 200 and "3 resource(s) would be deleted" in plan["issue"][0]["diagnostics"], texts(plan)
    status, outcome = await call("POST", f"{proxy}/$delete-expunge", body)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert "Observation: 3 deleted" in texts(outcome)
    assert [status_of(base, f"Observation/{tag}-o{i}/_history") for i in range(3)] == [404] * 3
    assert status_of(base, f"Observation/{tag}-co") == 200

    status, outcome = await call("DELETE", f"{proxy}/Patient?_id={tag}-p&_expunge=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert status_of(base, f"Patient/{tag}-p/_history") == 404 and status_of(base, f"Patient/{tag}-c") == 200


async def test_over_broad_delete_expunge_is_refused_unless_confirmed(make_proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 2})
    put(base, patient(f"{tag}-p"), *[observation(f"{tag}-o{i}", f"Patient/{tag}-p") for i in range(3)])
    query = f"Observation?subject=Patient/{tag}-p"
    status, outcome = await call("DELETE", f"{proxy}/{query}&_expunge=true")
    assert status == 422 and outcome["issue"][0]["code"] == "business-rule", outcome
    assert "would delete 3 resources, more than 2" in texts(outcome)
    status, outcome = await call("DELETE", f"{proxy}/Observation?_expunge=true")
    assert status == 422 and "without criteria" in texts(outcome)
    body = {"resourceType": "Parameters", "parameter": [{"name": "url", "valueString": query}]}
    status, outcome = await call("POST", f"{proxy}/$delete-expunge", body)
    assert status == 422 and "would delete 3 resources" in texts(outcome)
    assert all(status_of(base, f"Observation/{tag}-o{i}") == 200 for i in range(3))
    status, outcome = await call("DELETE", f"{proxy}/{query}&_expunge=true&_confirm=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert all(status_of(base, f"Observation/{tag}-o{i}") in (404, 410) for i in range(3))
