"""Many patients at once on the real upstreams: R6 ``Group/[id]/$purge`` and Kodjin's
``Patient/$bulk-purge`` run as fan-out jobs (one ``$purge`` child per patient). A cohort with
control patients outside it (byte-identical afterwards, history included), a resource shared by
two members (the cohort's data: deleted, counted once) and one shared with a patient outside it
(kept), members' data referencing each other, a Group edited during the job, a cancelled job."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from purgeproxy.engine.plan import Policy
from purgeproxy.engine.purge import PurgeEngine, PurgeRequest, PurgeSettings
from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.servers.profile import ProfileCache
from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, texts, until_done
from tests.seed import ref

SIZES = {"Encounter": 3, "Observation": 30, "Condition": 5, "DiagnosticReport": 3}


@pytest.fixture
async def proxy(make_proxy: Any, upstream: tuple[str, str]) -> str:
    return await make_proxy(upstream[1], auth={"admin_token": TOKEN}, purge={"batch_size": 10},
                            jobs={"poll_seconds": 0.2, "retry_after_seconds": 1})


def cohort(base: str, count: int, sizes: dict[str, int] = SIZES) -> tuple[list[seeds.Seed], list[seeds.Key]]:
    """``count`` patients (each seed also writes a control patient and its traps); returns the
    seeds and everything that must stay: every control, trap and shared resource."""
    built = [seeds.build(sizes=sizes, shared=False) for _ in range(count)]
    for seed in built:
        seeds.write(base, seed.resources)
    return built, [key for seed in built for key in seed.untouchable]


async def poll(url: str, progress: list[str] | None = None, timeout: float = 300) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await until_done(http, url, timeout=timeout,
                                each=None if progress is None else lambda a: progress.append(a.headers["X-Progress"]))


async def kodjin_status(proxy: str, job_id: str) -> dict[str, list[Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{proxy}/patient-purge/{job_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    values: dict[str, list[Any]] = {}
    for parameter in answer.json()["parameter"]:
        values.setdefault(parameter["name"], []).append(next(v for k, v in parameter.items() if k.startswith("value")))
    return values


def bulk_body(*patients: str, confirm: bool = False) -> dict[str, Any]:
    parameters = [{"name": "patientId", "valueString": p} for p in patients]
    return {"resourceType": "Parameters", "parameter": parameters + ([{"name": "confirm", "valueBoolean": True}]
                                                                     if confirm else [])}


async def test_group_purge_takes_its_members_and_nothing_else(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    built, keep = cohort(base, 3)
    a, b, c = (seed.patient for seed in built)
    tag = seeds.new_tag()
    # a resource in two members' compartments and no one else's: the cohort's data, deleted
    shared = {"resourceType": "Coverage", "id": f"{tag}-cov", "status": "active", "subscriber": ref("Patient", a),
              "beneficiary": ref("Patient", b), "payor": [ref("Patient", b)]}
    device = {"resourceType": "Device", "id": f"{tag}-dev"}
    group = {"resourceType": "Group", "id": f"{tag}-grp", "type": "person", "actual": True,
             "member": [{"entity": ref("Patient", p)} for p in (a, b, c)] + [{"entity": ref("Device", device["id"])}]}
    seeds.write(base, [shared, device, group])
    keep += [("Device", device["id"])]
    before = seeds.snapshot(base, keep)

    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Group/{group['id']}/$purge", headers=ASYNC)
        assert accepted.status_code == 202, accepted.text
        url = accepted.headers["Content-Location"]
    progress: list[str] = []
    done = await poll(url, progress)
    assert done.status_code == 200, done.text
    outcome = done.json()["entry"][0]["response"]["outcome"]
    report = texts(outcome)
    assert all(re.fullmatch(r"patients \d+ of 3, resources [\d,]+ of [\d,]+", p) for p in progress), progress
    assert f"Group member Device/{device['id']} is not a Patient: reported, not followed" in report
    assert f"Patient/{c}: success" in report
    for seed in built[2:]:
        assert seeds.present(base, seed.in_scope) == []
    assert outcome["issue"][0]["code"] == "success", report
    assert f"Patient/{a}: success" in report and f"Patient/{b}: success" in report, report
    for seed in built:
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.present(base, [("Coverage", shared["id"])]) == []
    job_id = url.rsplit("/", 1)[1]
    said = [await child_report(proxy, f"{job_id}-{index:05d}") for index in (0, 1)]
    within = f"(shared only within the cohort): Coverage/{shared['id']} is also in the compartment of"
    assert all(within in text for text in said), said  # each member's purge says what became of it
    assert any(f"deleted {within}" in text for text in said), said
    status = await kodjin_status(proxy, job_id)  # the Coverage counted once over the cohort
    assert status["purgedResourcesCount"] == [sum(len(seed.in_scope) for seed in built) + 1], status
    assert f"Group/{group['id']} was deleted" in report
    assert seeds.snapshot(base, keep) == before  # controls, traps, the Device


async def child_report(proxy: str, child: str) -> str:
    """A child job's own answer (one member's purge), as text."""
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.get(f"{proxy}/$async/{child}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return texts(answer.json()["entry"][0]["response"]["outcome"])


async def test_members_data_referencing_each_other_goes_whichever_member_runs_first(
        make_proxy: Any, upstream: tuple[str, str]) -> None:
    """A's Observation has B's as a member and B's has A's, and B's Patient record links A's: on
    HAPI each blocks the other member's delete until its own member's purge deleted it. One worker
    runs the children one by one, so the first member's purge is blocked, whichever it is; once all
    ended, the parent runs it again, once, and both end success. D shares a Coverage with a
    patient outside the cohort: kept, byte-identical, and (on HAPI, where it blocks D's Patient)
    D is not run again, since what blocks it is not going away."""
    kind, base = upstream
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"batch_size": 10},
                             jobs={"poll_seconds": 0.2, "retry_after_seconds": 1, "workers": 1})
    built, keep = cohort(base, 3, {"Encounter": 1, "Observation": 4, "Condition": 1})
    a, b, d = built
    tag = seeds.new_tag()
    first_obs = {seed.patient: next(k[1] for k in seed.in_scope if k[0] == "Observation") for seed in built}
    cross = [{"resourceType": "Observation", "id": f"{tag}-{mine}", "status": "final", "code": {"text": "x"},
              "subject": ref("Patient", owner.patient), "hasMember": [ref("Observation", first_obs[other.patient])]}
             for mine, owner, other in (("ab", a, b), ("ba", b, a))]
    linked = {"resourceType": "Patient", "id": b.patient, "name": [{"family": "Purge"}],
              "link": [{"other": ref("Patient", a.patient), "type": "seealso"}]}
    outsider = {"resourceType": "Coverage", "id": f"{tag}-out", "status": "active", "subscriber": ref("Patient", d.patient),
                "beneficiary": ref("Patient", a.control), "payor": [ref("Patient", a.control)]}
    seeds.write(base, [*cross, linked, outsider])
    keep.append(("Coverage", outsider["id"]))
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/$bulk-purge", json=bulk_body(*(s.patient for s in built)),
                                   headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.headers["Content-Location"].rsplit("/", 1)[1]
    done = await poll(f"{proxy}/$async/{job_id}")
    report = texts(done.json()["entry"][0]["response"]["outcome"])
    assert f"Patient/{a.patient}: success" in report and f"Patient/{b.patient}: success" in report, report
    for seed in (a, b):
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.present(base, [("Observation", o["id"]) for o in cross]) == []
    assert f"kept (shared): Coverage/{outsider['id']} is also in the compartment of Patient/{a.control}" \
        in await child_report(proxy, f"{job_id}-00002")
    async with httpx.AsyncClient(timeout=60) as http:
        again = [(await http.get(f"{proxy}/$async/{job_id}-{i:05d}-2", headers=AUTH)).status_code for i in range(3)]
    if kind == "hapi":
        assert f"Patient/{d.patient}: incomplete" in report and f"Coverage/{outsider['id']}" in report, report
        assert seeds.present(base, d.in_scope) == [("Patient", d.patient)]
        assert sorted(again[:2]) == [200, 404] and again[2] == 404, again  # whichever ran first, once; D not
    else:
        assert f"Patient/{d.patient}: success" in report and seeds.present(base, d.in_scope) == [], report
        assert again == [404, 404, 404], again
    status = await kodjin_status(proxy, job_id)
    removed = sum(len(seed.in_scope) for seed in built) + len(cross) - (kind == "hapi")
    assert status["purgedResourcesCount"] == [removed], status
    assert seeds.snapshot(base, keep) == before  # controls, traps, the Coverage shared with a control


async def test_a_group_edited_after_kick_off_does_not_widen_the_job(make_proxy: Any, upstream: tuple[str, str],
                                                                    tmp_path: Any) -> None:
    """Kick-off on a proxy that runs no jobs, then a control patient joins the Group, then a
    second proxy on the same store runs the job: the member read at kick-off is purged, the one
    added later is not, and the Group (changed since kick-off) is kept. ``_remove-references``
    takes the purged member out of the kept Group (on HAPI it would block the Patient's delete)."""
    _, base = upstream
    store = {"store": str(tmp_path / "jobs.sqlite3"), "poll_seconds": 0.2}
    accepting = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={**store, "workers": 0})
    built, keep = cohort(base, 1)
    seed = built[0]
    group = {"resourceType": "Group", "id": f"{seeds.new_tag()}-grp", "type": "person", "actual": True,
             "member": [{"entity": ref("Patient", seed.patient)}]}
    seeds.write(base, [group])
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{accepting}/Group/{group['id']}/$purge?_remove-references=true", headers=ASYNC)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.headers["Content-Location"].rsplit("/", 1)[1]
        edited = {**group, "member": group["member"] + [{"entity": ref("Patient", seed.control)}]}
        assert (await http.put(f"{base}/Group/{group['id']}", json=edited, headers=seeds.FHIR)).status_code == 200
    running = await make_proxy(base, auth={"admin_token": TOKEN}, jobs=store)
    done = await poll(f"{running}/$async/{job_id}")
    outcome = done.json()["entry"][0]["response"]["outcome"]
    report = texts(outcome)
    assert f"Patient/{seed.patient}: success" in report, report
    assert seed.control not in report.replace(f"Group/{group['id']}", "")  # never followed
    assert f"Group/{group['id']} was kept: it changed since the job started" in report
    assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, keep) == before  # the control patient who joined later, untouched
    now = httpx.get(f"{base}/Group/{group['id']}", headers=seeds.FHIR).json()
    assert now["member"] == [{"entity": ref("Patient", seed.control)}]


async def test_kodjin_bulk_purge_reports_each_patient_and_sums_counts(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    built, keep = cohort(base, 2)
    before = seeds.snapshot(base, keep)
    ids = [seed.patient for seed in built]
    missing = f"{seeds.new_tag()}-gone"
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/$bulk-purge", json=bulk_body(*ids, ids[0], missing), headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["Content-Location"]
    assert re.fullmatch(re.escape(proxy) + r"/patient-purge/[0-9a-f]{32}", url)
    job_id = url.rsplit("/", 1)[1]
    done = await poll(f"{proxy}/$async/{job_id}")
    outcome = done.json()["entry"][0]["response"]["outcome"]
    report = texts(outcome)
    assert outcome["issue"][0]["code"] == "success", report
    assert "All 3 patient(s) purged completely" in report  # the repeated id counts once
    assert f"no Patient/{missing} was found" in report  # reported as its own purge says
    status = await kodjin_status(proxy, job_id)
    assert status["patientId"] == [*ids, missing] and status["status"] == ["completed"]
    expected = sum(len(seed.in_scope) for seed in built)
    assert status["purgedResourcesCount"] == status["totalResourcesCount"] == [expected]
    for seed in built:
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, keep) == before


async def test_a_patient_is_not_purged_by_two_jobs_at_once(proxy: str, upstream: tuple[str, str]) -> None:
    """A single $purge of a member is already running: the bulk job's child for that patient is
    stored only once it ended, and both succeed."""
    _, base = upstream
    built, keep = cohort(base, 2, {**SIZES, "Observation": 150})
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        single = await http.post(f"{proxy}/Patient/{built[0].patient}/$purge", headers=ASYNC)
        bulk = await http.post(f"{proxy}/Patient/$bulk-purge", json=bulk_body(*(s.patient for s in built)), headers=ASYNC)
    single_url, bulk_id = single.headers["Content-Location"], bulk.headers["Content-Location"].rsplit("/", 1)[1]
    done = await poll(f"{proxy}/$async/{bulk_id}")
    assert (await poll(single_url)).json()["entry"][0]["response"]["outcome"]["issue"][0]["code"] == "success"
    outcome = done.json()["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["code"] == "success", texts(outcome)
    for seed in built:
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, keep) == before


async def test_cancel_stops_every_child(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    built, keep = cohort(base, 3, {**SIZES, "Observation": 400})
    before = seeds.snapshot(base, keep)
    ids = [seed.patient for seed in built]
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/$bulk-purge", json=bulk_body(*ids), headers=ASYNC)
        job_id = accepted.headers["Content-Location"].rsplit("/", 1)[1]
        for _ in range(600):
            if (await kodjin_status(proxy, job_id))["purgedResourcesCount"][0] > 0:
                break
            await asyncio.sleep(0.05)
        cancelled = await http.delete(f"{proxy}/$async/{job_id}", headers=AUTH)
        assert cancelled.status_code == 202, cancelled.text
        assert (await http.get(f"{proxy}/$async/{job_id}", headers=AUTH)).status_code == 404
    await asyncio.sleep(3)  # the batches in flight end
    left = [seeds.present(base, seed.in_scope) for seed in built]
    await asyncio.sleep(2)
    assert [seeds.present(base, seed.in_scope) for seed in built] == left  # nothing more is deleted
    assert sum(map(len, left)) > 0  # it really stopped mid-way
    assert (await kodjin_status(proxy, job_id))["status"] == ["cancelled"]
    assert seeds.snapshot(base, keep) == before


async def test_remove_references_leaves_another_members_data_to_its_own_purge(proxy: str,
                                                                              upstream: tuple[str, str]) -> None:
    """``_remove-references`` on a cohort: B's Observation about A (``focus``, not a compartment
    parameter) is B's data, which B's purge deletes: A's purge does not rewrite it (on HAPI it
    blocks A's Patient until B's purge deleted it; A is then run again). An Observation of a
    patient outside the cohort about A is a real outside referrer: it loses only that reference."""
    _, base = upstream
    built, keep = cohort(base, 2, {"Encounter": 1, "Observation": 3})
    a, b = built
    tag = seeds.new_tag()
    theirs = {"resourceType": "Observation", "id": f"{tag}-theirs", "status": "final", "code": {"text": "x"},
              "subject": ref("Patient", b.patient), "focus": [ref("Patient", a.patient)]}
    outside = {"resourceType": "Observation", "id": f"{tag}-outside", "status": "final", "code": {"text": "x"},
               "subject": ref("Patient", a.control), "focus": [ref("Patient", a.patient)], "valueString": "kept"}
    seeds.write(base, [theirs, outside])
    before = seeds.snapshot(base, keep)
    body = bulk_body(a.patient, b.patient)
    body["parameter"].append({"name": "_remove-references", "valueBoolean": True})
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/$bulk-purge", json=body, headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.headers["Content-Location"].rsplit("/", 1)[1]
    done = await poll(f"{proxy}/$async/{job_id}")
    outcome = done.json()["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["code"] == "success", texts(outcome)
    for seed in built:
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.present(base, [("Observation", theirs["id"])]) == []
    async with httpx.AsyncClient(timeout=60) as http:
        children = [(await http.get(f"{proxy}/$async/{job_id}-00000{suffix}", headers=AUTH)) for suffix in ("", "-2")]
    said = "\n".join(texts(c.json()["entry"][0]["response"]["outcome"]) for c in children if c.status_code == 200)
    assert f"Observation/{theirs['id']} references Patient/{a.patient}; it is another cohort member's data" in said
    assert f"Observation/{theirs['id']}: reference" not in said  # never rewritten
    assert f"Observation/{outside['id']}: reference(s) to Patient/{a.patient} removed" in said, said
    now = httpx.get(f"{base}/Observation/{outside['id']}", headers=seeds.FHIR).json()
    assert {k: v for k, v in now.items() if k != "meta"} == {k: v for k, v in outside.items() if k != "focus"}
    assert seeds.snapshot(base, keep) == before


async def test_a_resource_that_gains_a_patient_outside_the_cohort_after_it_was_read_is_kept(
        upstream: tuple[str, str]) -> None:
    """The cohort rule at delete time: a Coverage of A and B (both members) is planned for
    deletion; before the first delete someone adds A's control patient (outside the cohort) as its
    payor. The re-check of the changed version applies the same rule: kept, as it now is."""
    kind, base = upstream
    a, b = (seeds.build(sizes={"Observation": 3}, shared=False) for _ in range(2))
    tag = seeds.new_tag()
    coverage = {"resourceType": "Coverage", "id": f"{tag}-cov", "status": "active", "subscriber": ref("Patient", a.patient),
                "beneficiary": ref("Patient", b.patient), "payor": [ref("Patient", b.patient)]}
    seeds.write(base, [*a.resources, *b.resources, coverage])
    widened = {**coverage, "payor": [ref("Patient", b.patient), ref("Patient", a.control)]}
    http = make_http_client(connect=5, read=120, max_connections=8)
    try:
        client = FhirClient(base, http)
        profile = await ProfileCache(client, "auto", "auto").get()
        settings = PurgeSettings(Policy(frozenset({"AuditEvent", "Provenance"}), False), batch_size=25, page_size=50,
                                 max_rounds=5, hard_delete="auto", sweep=False)  # all read, then deleted
        engine = PurgeEngine(client, profile, settings, asyncio.Semaphore(4))
        request = PurgeRequest(a.patient, dict(profile.definitions.patient_compartment), confirmed=True,
                               cohort=frozenset({b.patient}))
        assert ("Coverage", coverage["id"]) in (await engine.plan(request)).order  # the cohort's, as read

        written: list[bool] = []

        async def widen_before_the_first_delete(done: int, planned: int) -> None:
            if not written:  # the first progress call comes before the first batch
                written.append(True)
                seeds.write(base, [widened])

        result = await engine.run(request, widen_before_the_first_delete)
    finally:
        await http.aclose()
    assert ("Coverage", coverage["id"]) in result.deletion.changed, result.deletion
    now = httpx.get(f"{base}/Coverage/{coverage['id']}", headers=seeds.FHIR).json()
    assert {k: v for k, v in now.items() if k != "meta"} == widened  # kept as it now is
    assert seeds.present(base, [k for k in a.in_scope if k[0] != "Patient"]) == []
    assert result.complete == (kind != "hapi")  # on HAPI the kept Coverage blocks A's Patient
