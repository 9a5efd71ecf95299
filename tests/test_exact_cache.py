"""Exact erasure against stale searches and concurrent writers, on the real upstreams.

HAPI serves a search from its cache for about a minute. A dry run followed by the real
operation, or matches that change in between, must not make the proxy act on the stale answer:
a resource changed so that it is no longer in scope survives byte for byte, a resource added in
scope is deleted, and ``success`` is said only when a fresh search finds nothing left.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from purgeproxy.engine.deleted_history import LATE_COMMIT
from tests import seed as seeds
from tests.helpers import AUTH, TOKEN, purge, texts
from tests.seed import ref

FHIR = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
FRESH = {**FHIR, "Cache-Control": "no-cache"}  # the test's own searches bypass HAPI's cache


async def call(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=600) as http:
        answer = await http.request(method, url, json=body, headers=AUTH)
    return answer.status_code, answer.json()


def observation(oid: str, subject: str, code: str = "a") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": "http://example.org/codes", "code": code}]}}


def moved(resource: dict[str, Any], subject: str) -> dict[str, Any]:
    return {**{k: v for k, v in resource.items() if k != "meta"}, "subject": {"reference": subject}}


def fresh_search(base: str, query: str) -> list[str]:
    """Ids a cache-bypassing search finds now (every page)."""
    found, url, params = [], f"{base}/{query.split('?')[0]}", dict([query.split("?")[1].split("=", 1)])
    with httpx.Client(timeout=120) as http:
        params["_count"] = "500"
        while url:
            bundle = http.get(url, params=params, headers=FRESH).json()
            found += [e["resource"]["id"] for e in bundle.get("entry") or []
                      if (e.get("search") or {}).get("mode", "match") == "match"]
            url, params = next((each["url"] for each in bundle.get("link") or [] if each["relation"] == "next"), ""), None
    return found


# --- (a) $purge after a dry run ------------------------------------------------------------------

async def test_purge_after_a_dry_run_acts_on_the_current_state(proxy, upstream) -> None:
    base = upstream[1]
    seed = seeds.build(sizes={"Observation": 5, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    assert status == 200 and f"{len(seed.in_scope)} resource(s)" in plan["issue"][0]["diagnostics"], texts(plan)

    first = next(r for r in seed.resources if r["id"] == f"{seed.patient}-obs0")
    seeds.write(base, [moved(first, f"Patient/{seed.control}"),  # now the control patient's
                       observation(f"{seed.patient}-late", f"Patient/{seed.patient}")])
    kept = seed.untouchable + [("Observation", first["id"])]
    before = seeds.snapshot(base, kept)

    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert "Observation: 5 deleted" in texts(outcome)  # 4 of the seeded, and the late one
    doomed = [k for k in seed.in_scope if k != ("Observation", first["id"])] + [("Observation", f"{seed.patient}-late")]
    assert seeds.present(base, doomed) == []
    assert seeds.snapshot(base, kept) == before  # the moved one and the control: byte-identical


# --- (b) delete-expunge and conditional _expunge after a dry run -----------------------------------

@pytest.mark.parametrize("how", ["operation", "conditional"])
async def test_delete_expunge_after_a_dry_run_acts_on_the_current_state(proxy, upstream, how) -> None:
    base, tag = upstream[1], seeds.new_tag()
    owner = f"Patient/{tag}-p"
    seeds.write(base, [{"resourceType": "Patient", "id": f"{tag}-p"}, {"resourceType": "Patient", "id": f"{tag}-c"},
                       *[observation(f"{tag}-o{i}", owner) for i in range(3)],
                       observation(f"{tag}-co", f"Patient/{tag}-c")])
    query = f"Observation?subject={owner}&code=http://example.org/codes|a"
    body = {"resourceType": "Parameters", "parameter": [{"name": "url", "valueString": query}]}
    status, plan = await call("POST", f"{proxy}/$delete-expunge?dryRun=true", body)
    assert status == 200 and "3 resource(s) would be deleted" in plan["issue"][0]["diagnostics"], texts(plan)

    seeds.write(base, [observation(f"{tag}-o1", owner, code="b"),  # no longer matches the criteria
                       observation(f"{tag}-late", owner)])  # matches, written after the dry run
    kept = [("Observation", f"{tag}-o1"), ("Observation", f"{tag}-co"), ("Patient", f"{tag}-c")]
    before = seeds.snapshot(base, kept)

    if how == "operation":
        status, outcome = await call("POST", f"{proxy}/$delete-expunge", body)
    else:
        status, outcome = await call("DELETE", f"{proxy}/{query}&_expunge=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert "Observation: 3 deleted" in texts(outcome)
    assert seeds.present(base, [("Observation", f"{tag}-{i}") for i in ("o0", "o2", "late")]) == []
    assert seeds.snapshot(base, kept) == before


# --- (c) cascade after a dry run -------------------------------------------------------------------

async def test_cascade_after_a_dry_run_acts_on_the_current_state(proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    owner = f"Patient/{tag}-p"
    report = {"resourceType": "DiagnosticReport", "id": f"{tag}-dr", "status": "final", "code": {"text": "r"},
              "result": [ref("Observation", f"{tag}-o")]}
    seeds.write(base, [{"resourceType": "Patient", "id": f"{tag}-p"}, {"resourceType": "Patient", "id": f"{tag}-c"},
                       observation(f"{tag}-o", owner), observation(f"{tag}-o2", owner), report])
    status, plan = await call("DELETE", f"{proxy}/{owner}?_cascade=delete&_dryRun=true")
    assert status == 200 and "4 resource(s) would be deleted" in plan["issue"][0]["diagnostics"], texts(plan)

    seeds.write(base, [observation(f"{tag}-o", f"Patient/{tag}-c"),  # no longer references the target
                       observation(f"{tag}-late", owner)])
    kept = [("Observation", f"{tag}-o"), ("DiagnosticReport", f"{tag}-dr"), ("Patient", f"{tag}-c")]
    before = seeds.snapshot(base, kept)

    status, outcome = await call("DELETE", f"{proxy}/{owner}?_cascade=delete")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert seeds.present(base, [("Patient", f"{tag}-p"), ("Observation", f"{tag}-o2"), ("Observation", f"{tag}-late")]) == []
    assert seeds.snapshot(base, kept) == before


# --- (d) a concurrent writer during a large purge on HAPI --------------------------------------------

LARGE = {"Encounter": 30, "Observation": 1200, "DiagnosticReport": 60, "Condition": 150, "Procedure": 60}
WRITES = 100  # the writer's budget: it must stop for the purge to be able to finish at all


@pytest.mark.hapi
async def test_a_concurrent_writer_cannot_make_the_purge_claim_success_falsely(make_proxy, hapi_base) -> None:
    """With HAPI's hard delete, as in production (soft deletes would also leave thousands of
    deleted resources that slow every later type-level $expunge in the session). Success only
    when nothing is left, and the count deleted is exact either way. When the rounds end before
    the writer does, the outcome is incomplete and names what remains, all of it still there;
    the writer may have added its last writes as the purge answered (on HAPI it writes until
    the Patient is deleted), and only those may be left unnamed."""
    base = hapi_base
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"max_rounds": 10})
    seed = seeds.build(sizes=LARGE, shared=False)
    seeds.write(base, seed.resources, chunk=500)
    before = seeds.snapshot(base, seed.untouchable)
    task = asyncio.create_task(_purge(proxy, seed.patient))
    written = await _keep_writing(base, seed.patient, task)
    status, outcome = await task

    assert status == 200, outcome
    assert written, "the writer must have added resources while the purge ran"
    doomed = seed.in_scope + [("Observation", oid) for oid in written]
    left = seeds.present(base, doomed)
    found = {q: fresh_search(base, q) for q in (f"Observation?subject=Patient/{seed.patient}",
                                                f"Condition?subject=Patient/{seed.patient}",
                                                f"Patient?_id={seed.patient}")}
    report, verdict = texts(outcome), outcome["issue"][0]["diagnostics"]
    deleted = len(doomed) - len(left)  # nothing but the purge deletes them
    if outcome["issue"][0]["code"] == "success":
        assert left == [] and not any(found.values()), report
        assert f"({deleted} deleted)" in verdict, (deleted, report[:3000])
    else:  # gave up while the writer still wrote
        said = re.search(r": (\d+) deleted, (\d+) in scope remain", verdict)
        assert said and int(said[1]) == deleted, (deleted, left, report[:3000])
        named = {tuple(ref.split("/", 1)) for line in report.splitlines() if line.startswith("still present: ")
                 for ref in line.removeprefix("still present: ").split(", ")}
        # what it says remains is there; unnamed can only be what the writer added as it ended
        assert int(said[2]) == len(named) and named <= set(left), (named, left)
        assert set(left) - named <= {("Observation", oid) for oid in written[-3:]}, (named, left)
    assert seeds.snapshot(base, seed.untouchable) == before


async def _purge(proxy: str, patient: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=900) as http:
        answer = await http.post(f"{proxy}/Patient/{patient}/$purge?confirm=true", headers=AUTH)
    return answer.status_code, answer.json()


async def _keep_writing(base: str, patient: str, purge_task: asyncio.Task[Any]) -> list[str]:
    """Add the patient's Observations while the purge runs; the ids the upstream accepted.

    On HAPI a write that references the deleted Patient is refused, so writes end by themselves
    once the purge has reached the Patient."""
    written: list[str] = []
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(WRITES):
            if purge_task.done():
                break
            oid = f"{patient}-w{i}"
            answer = await http.put(f"{base}/Observation/{oid}", json=observation(oid, f"Patient/{patient}"), headers=FHIR)
            if answer.status_code in (200, 201):
                written.append(oid)
            await asyncio.sleep(0.05)
    return written


# --- (e) HAPI's count of a history, reused for a minute ---------------------------------------------
# HAPI counts an instance's history once and, for about a minute after, lists only as many of its
# versions (newest first) as it counted, whatever ``Cache-Control`` asks: a history read, then an
# update, then the same read answered one version of two (HAPI 8.4). A read by anyone primes it.

def history_read(base: str, path: str) -> list[str]:
    """The version ids a plain ``_history`` read lists (as any client would read it)."""
    bundle = httpx.get(f"{base}/{path}/_history", headers=FRESH).json()
    return [e["resource"]["meta"]["versionId"] for e in bundle.get("entry") or [] if "resource" in e]


def gone(base: str, path: str) -> bool:
    return httpx.get(f"{base}/{path}", headers=FHIR).status_code in (404, 410)


@pytest.mark.hapi
async def test_a_history_read_just_before_cannot_hide_a_delete_older_than_the_patients_update(
        make_proxy, hapi_base) -> None:
    """The listing of the patient's earlier deletes dates from the patient's first version: an
    Observation deleted before the patient was updated still has its history removed when the
    patient's history was read (and counted) just before that update. The delete is older than
    ``LATE_COMMIT`` before the purge, so only the first listing can find it."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    seeds.write(base, seed.resources)
    earlier = next(k for k in seed.in_scope if k[0] == "Observation")
    assert httpx.delete(f"{base}/{earlier[0]}/{earlier[1]}", headers=FHIR).status_code in (200, 204)
    await asyncio.sleep(LATE_COMMIT.total_seconds() + 1)  # older than what the closing listing lists again
    assert history_read(base, f"Patient/{seed.patient}") == ["1"]
    updated = {"resourceType": "Patient", "id": seed.patient, "active": False}
    assert httpx.put(f"{base}/Patient/{seed.patient}", json=updated, headers=FHIR).status_code == 200
    assert history_read(base, f"Patient/{seed.patient}") == ["2"]  # the trap is set: version 1 hidden
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})

    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert f"{earlier[0]}/{earlier[1]}" in texts(outcome)
    assert gone(base, f"{earlier[0]}/{earlier[1]}/_history/1")
    assert seeds.snapshot(base, seed.untouchable) == before


@pytest.mark.hapi
async def test_a_history_read_just_before_cannot_hide_a_version_from_erase(make_proxy, hapi_base) -> None:
    """``$erase`` of version 2 removes it and every older version, though the resource's history
    was read (and counted) before its third version was written; the third stays."""
    base, oid = hapi_base, f"{seeds.new_tag()}-o"
    for text in ("one", "two"):
        seeds.write(base, [seeds.observation(oid, None, text)])
    assert history_read(base, f"Observation/{oid}") == ["2", "1"]
    seeds.write(base, [seeds.observation(oid, None, "three")])
    assert history_read(base, f"Observation/{oid}") == ["3", "2"]  # the trap is set: version 1 hidden
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})

    status, outcome = await call("POST", f"{proxy}/Observation/{oid}/_history/2/$erase")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert gone(base, f"Observation/{oid}/_history/2") and gone(base, f"Observation/{oid}/_history/1")
    current = httpx.get(f"{base}/Observation/{oid}", headers=FHIR).json()
    assert current["meta"]["versionId"] == "3" and current["code"] == {"text": "three"}
