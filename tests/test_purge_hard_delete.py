"""Hard delete on the real HAPI FHIR JPA server: history removed only for what the proxy deleted.

HAPI's instance ``$expunge`` is the hard delete. Its traps: a resource written again between the
proxy's DELETE and the ``$expunge`` (its history must survive whole, and the outcome must say the
hard delete failed), and another patient's deleted resources (a type-level ``$expunge`` would take
their history; the control patient must stay byte-identical, history included).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from purgeproxy.engine.deletion import Deleter
from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.fhir.references import Key
from purgeproxy.servers.registry import kind_named
from tests import seed as seeds
from tests.helpers import TOKEN, purge, texts

pytestmark = pytest.mark.hapi

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Cache-Control": "no-cache"}


async def test_a_resource_written_again_after_its_delete_keeps_its_whole_history(hapi_base: str,
                                                                                 monkeypatch: Any) -> None:
    """Between the proxy's DELETE and its ``$expunge`` another client writes the resource again:
    the expunge must remove nothing of it (its new version was never examined, and its older ones
    are what can restore it) and the report must say its hard delete failed."""
    tag = seeds.new_tag()
    observations = [seeds.observation(f"{tag}-o{i}", f"{tag}-p", "v1") for i in range(3)]
    seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{tag}-p"}, *observations])
    seeds.write(hapi_base, [{**o, "code": {"text": "v2"}} for o in observations])  # version 2 of each
    keys = [("Observation", o["id"]) for o in observations]
    revived = keys[1]
    kind = kind_named("hapi")
    expunge = kind.hard_delete
    written: dict[Key, tuple[bytes, bytes]] = {}

    async def written_again_first(client: FhirClient, key: Key) -> str | None:
        if key == revived:
            answer = await client.request("PUT", f"{key[0]}/{key[1]}", json=seeds.observation(key[1], f"{tag}-p", "v4"))
            assert answer.status in (200, 201), answer.body
            written.update(seeds.snapshot(hapi_base, [key]))  # its bytes and whole history, then
        return await expunge(client, key)

    monkeypatch.setattr(kind, "hard_delete", written_again_first)
    http = make_http_client(connect=5, read=120, max_connections=4)
    try:
        deleter = Deleter(FhirClient(hapi_base, http), kind, 10, asyncio.Semaphore(4), True)
        report = await deleter.delete(keys, versions=dict.fromkeys(keys, "2"))
    finally:
        await http.aclose()
    assert sorted(report.deleted) == sorted(keys)
    assert sorted(report.hard_deleted) == sorted(k for k in keys if k != revived)
    assert list(report.hard_delete_failed) == [revived]
    assert seeds.history_size(hapi_base, revived) == 4  # two versions, the proxy's delete, the new one
    assert seeds.snapshot(hapi_base, [revived]) == written  # nothing of it expunged
    assert [seeds.history_size(hapi_base, k) for k in keys if k != revived] == [0, 0]


async def test_a_resource_another_client_moved_and_deleted_after_planning_keeps_its_history(hapi_base: str) -> None:
    """After the proxy examined the patient's Observations (version 1), another client moved one
    to another patient and deleted it, and deleted a second as it was. The deleter finds both
    gone: the second's history is the patient's alone and is removed; the first's holds the other
    patient's version, so it is kept byte for byte and reported."""
    tag = seeds.new_tag()
    observations = [seeds.observation(f"{tag}-o{i}", f"{tag}-p", "v1") for i in range(3)]
    seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{tag}-p"},
                            {"resourceType": "Patient", "id": f"{tag}-q"}, *observations])
    keys = [("Observation", o["id"]) for o in observations]
    moved, deleted = keys[1], keys[2]
    with httpx.Client(headers=FHIR) as http:
        assert http.put(f"{hapi_base}/Observation/{moved[1]}",
                        json=seeds.observation(moved[1], f"{tag}-q", "v2")).status_code == 200
        for key in (moved, deleted):
            assert http.delete(f"{hapi_base}/{key[0]}/{key[1]}").status_code in (200, 204)
    kept = seeds.snapshot(hapi_base, [moved])
    assert seeds.history_size(hapi_base, moved) == 3  # the patient's version, the other's, the deletion

    async def references_p(resources: list[dict[str, Any]]) -> set[Key]:
        return {(r["resourceType"], r["id"]) for r in resources
                if r["subject"]["reference"] == f"Patient/{tag}-p"}

    http = make_http_client(connect=5, read=120, max_connections=4)
    try:
        deleter = Deleter(FhirClient(hapi_base, http), kind_named("hapi"), 10, asyncio.Semaphore(4), True,
                          references_p)
        report = await deleter.delete(keys, versions=dict.fromkeys(keys, "1"))
    finally:
        await http.aclose()
    assert report.deleted == [keys[0]] and sorted(report.already_gone) == [moved, deleted]
    assert sorted(report.hard_deleted) == [keys[0], deleted]
    assert list(report.unexamined) == [moved] and "deleted by another client" in report.unexamined[moved]
    assert seeds.snapshot(hapi_base, [moved]) == kept
    assert [seeds.history_size(hapi_base, k) for k in (keys[0], deleted)] == [0, 0]


async def test_a_hard_delete_purge_leaves_the_control_patients_deleted_history(make_proxy: Any,
                                                                               hapi_base: str) -> None:
    """The control patient has resources deleted (soft) before the purge: their history is not the
    purged patient's and must survive the hard delete byte for byte."""
    seed = seeds.build(sizes={"Observation": 6, "Condition": 3}, shared=False)
    extra = [seeds.observation(f"{seed.control}-gone{i}", seed.control, "v1") for i in range(2)]
    seeds.write(hapi_base, seed.resources + extra)
    seeds.write(hapi_base, [{**o, "code": {"text": "v2"}} for o in extra])
    control_deleted = [("Observation", o["id"]) for o in extra]
    with httpx.Client() as http:
        for rtype, rid in control_deleted:
            assert http.delete(f"{hapi_base}/{rtype}/{rid}", headers=FHIR).status_code in (200, 204)
    untouchable = seed.untouchable + control_deleted
    before = seeds.snapshot(hapi_base, untouchable)
    assert [seeds.history_size(hapi_base, k) for k in control_deleted] == [3, 3]  # two versions and a deletion

    proxy = await make_proxy(hapi_base, auth={"admin_token": TOKEN}, purge={"hard_delete": "require"})
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert f"history removed with {kind_named('hapi').hard_delete_method} for {len(seed.in_scope)}" in texts(outcome)
    assert [seeds.history_size(hapi_base, k) for k in seed.in_scope] == [0] * len(seed.in_scope)
    assert seeds.snapshot(hapi_base, untouchable) == before


def test_hapi_does_not_run_expunge_entries_of_a_batch(hapi_base: str) -> None:
    """Why the hard delete is not batched: HAPI stores a batch entry's ``Parameters`` body as a new
    resource instead of running ``$expunge`` (hapi-fhir#4158) and removes nothing."""
    tag = seeds.new_tag()
    seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{tag}-p"}, seeds.observation(f"{tag}-o", f"{tag}-p", "v1")])
    key = ("Observation", f"{tag}-o")
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "expungeDeletedResources", "valueBoolean": True}]}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": parameters, "request": {"method": "POST", "url": f"{key[0]}/{key[1]}/$expunge"}}]}
    with httpx.Client() as http:
        assert http.delete(f"{hapi_base}/{key[0]}/{key[1]}", headers=FHIR).status_code in (200, 204)
        answer = http.post(hapi_base, json=bundle, headers=FHIR)
    entry = answer.json()["entry"][0]["response"]
    assert entry["status"].startswith("201") and entry["location"].startswith("Parameters/")
    assert seeds.history_size(hapi_base, key) == 2  # still there: created, deleted


def test_hapi_delete_with_expunge_only_submits_a_job(hapi_base: str) -> None:
    """Why ``DELETE Type?_id=...&_expunge=true`` is not the hard delete: HAPI answers at once that a
    batch2 job was submitted (removal comes later, by database id, without a version check)."""
    tag = seeds.new_tag()
    seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{tag}-p"}, seeds.observation(f"{tag}-o", f"{tag}-p", "v1")])
    with httpx.Client() as http:
        answer = http.delete(f"{hapi_base}/Observation", params={"_id": f"{tag}-o", "_expunge": "true"}, headers=FHIR)
    assert answer.status_code == 200
    assert "Delete job submitted with id" in texts(answer.json())
