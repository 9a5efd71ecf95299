"""Microsoft's ``$bulk-delete`` on the real upstreams: type and system level, hard and soft,
status at ``_operations/bulk-delete/<id>`` (202 with progress, 200 with ``ResourceDeletedCount``
per type), cancel; resources that do not match (controls) byte-identical, history included."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, until_done
from tests.seed import ref

SYSTEM = "urn:purgeproxy:test"


@pytest.fixture
async def proxy(make_proxy: Any, upstream: tuple[str, str]) -> str:
    return await make_proxy(upstream[1], auth={"admin_token": TOKEN}, purge={"batch_size": 10},
                            jobs={"poll_seconds": 0.2, "retry_after_seconds": 1})


def tagged(base: str, count: int, conditions: int = 0) -> tuple[str, list[seeds.Key], list[seeds.Key]]:
    """``count`` Observations (and ``conditions`` Conditions) carrying a fresh tag, and as many
    control resources carrying another: returns the tag, the tagged keys, the control keys."""
    tag, other = seeds.new_tag(), seeds.new_tag()
    pid = f"{tag}-p"
    resources: list[dict[str, Any]] = [{"resourceType": "Patient", "id": pid}]
    for label, keys_tag in ((tag, tag), (other, other)):
        for i in range(count):
            resources.append({"resourceType": "Observation", "id": f"{label}-o{i}", "status": "final",
                              "code": {"text": "x"}, "subject": ref("Patient", pid),
                              "meta": {"tag": [{"system": SYSTEM, "code": keys_tag}]}})
        for i in range(conditions):
            resources.append({"resourceType": "Condition", "id": f"{label}-c{i}", "subject": ref("Patient", pid),
                              "meta": {"tag": [{"system": SYSTEM, "code": keys_tag}]}})
    seeds.write(base, resources)
    keys = [(r["resourceType"], r["id"]) for r in resources[1:]]
    return tag, [k for k in keys if k[1].startswith(tag)], [k for k in keys if k[1].startswith(other)] + [("Patient", pid)]


async def finish(proxy: str, url: str, timeout: float = 300) -> httpx.Response:
    def running(answer: httpx.Response) -> None:
        assert answer.headers["X-Progress"]

    async with httpx.AsyncClient(timeout=60) as http:
        return await until_done(http, url, timeout=timeout, each=running)


def counts(answer: httpx.Response) -> dict[str, int]:
    document = answer.json()
    assert document["resourceType"] == "Parameters", document
    found = next(p for p in document["parameter"] if p["name"] == "ResourceDeletedCount")
    return {part["name"]: part["valueInteger64"] for part in found["part"]}


def issues(answer: httpx.Response) -> dict[str, Any]:
    return next(p["resource"] for p in answer.json()["parameter"] if p["name"] == "outcome")


async def test_type_level_hard_delete(proxy: str, upstream: tuple[str, str]) -> None:
    """Hard on HAPI ($expunge); the bare Medplum engine (a generic upstream) has no hard delete:
    ``_hardDelete=true`` is refused there before anything is stored, and the soft form runs."""
    kind, base = upstream
    tag, doomed, keep = tagged(base, 25)
    before = seeds.snapshot(base, keep)
    criteria = {"_tag": f"{SYSTEM}|{tag}", "_hardDelete": "true"}
    async with httpx.AsyncClient(timeout=60) as http:
        if kind != "hapi":
            refused = await http.delete(f"{proxy}/Observation/$bulk-delete", params=criteria, headers=ASYNC)
            assert refused.status_code == 422 and "no hard delete" in refused.text
            assert seeds.present(base, doomed) == doomed
            criteria.pop("_hardDelete")
        accepted = await http.delete(f"{proxy}/Observation/$bulk-delete", params=criteria, headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["Content-Location"]
    assert url.startswith(f"{proxy}/_operations/bulk-delete/")
    done = await finish(proxy, url)
    assert done.status_code == 200, done.text
    assert counts(done) == {"Observation": 25}
    assert issues(done)["issue"][0]["code"] == "success", issues(done)
    assert seeds.present(base, doomed) == []
    if kind == "hapi":
        gone = seeds.snapshot(base, doomed[:3])
        assert all(history in (b"404", b"410", b"[]") for _, history in gone.values()), gone  # hard: no history
    assert seeds.snapshot(base, keep) == before


async def test_system_level_soft_delete_counts_per_type(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    tag, doomed, keep = tagged(base, 6, conditions=4)
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.delete(f"{proxy}/$bulk-delete", params={"_tag": f"{SYSTEM}|{tag}",
                                                                     "excludedResourceTypes": "Condition"},
                                     headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    done = await finish(proxy, accepted.headers["Content-Location"])
    assert done.status_code == 200, done.text
    assert counts(done) == {"Observation": 6}  # Condition excluded
    assert issues(done)["issue"][0]["code"] == "success", issues(done)
    conditions = [k for k in doomed if k[0] == "Condition"]
    assert seeds.present(base, doomed) == conditions
    assert seeds.snapshot(base, keep) == before


async def test_cancel_stops_the_bulk_delete(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    tag, doomed, keep = tagged(base, 600)
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.delete(f"{proxy}/Observation/$bulk-delete",
                                     params={"_tag": f"{SYSTEM}|{tag}", "confirm": "true"}, headers=ASYNC)
        url = accepted.headers["Content-Location"]
        for _ in range(1200):
            answer = await http.get(url, headers=AUTH)
            if answer.status_code == 202 and answer.headers["X-Progress"].startswith("deleted ") \
                    and not answer.headers["X-Progress"].startswith("deleted 0 "):
                break
            await asyncio.sleep(0.05)
        assert (await http.delete(url, headers=AUTH)).status_code == 202
        done = await finish(proxy, url)
    assert done.status_code == 200, done.text
    assert issues(done)["issue"][0]["code"] == "incomplete"  # cancelled, said so
    await asyncio.sleep(2)
    left = seeds.present(base, doomed)
    await asyncio.sleep(2)
    assert seeds.present(base, doomed) == left and 0 < len(left) < len(doomed)
    assert counts(done) == {"Observation": len(doomed) - len(left)}  # measured: what went before the cancel
    assert seeds.snapshot(base, keep) == before


async def test_remove_references_keeps_the_referrer_and_its_other_content(proxy: str, upstream: tuple[str, str]) -> None:
    """A kept DiagnosticReport lists a deleted Observation and a kept one: only the deleted one's
    reference goes (a new version); on HAPI the delete is no longer blocked by it."""
    _, base = upstream
    tag, doomed, keep = tagged(base, 3)
    kept_obs = next(k for k in keep if k[0] == "Observation")
    report = {"resourceType": "DiagnosticReport", "id": f"{tag}-dr", "status": "final", "code": {"text": "panel"},
              "result": [ref(*doomed[0]), ref(*kept_obs)], "conclusion": "unchanged"}
    seeds.write(base, [report])
    before = seeds.snapshot(base, keep)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.delete(f"{proxy}/Observation/$bulk-delete", params={
            "_tag": f"{SYSTEM}|{tag}", "_remove-references": "true"}, headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    done = await finish(proxy, accepted.headers["Content-Location"])
    assert done.status_code == 200, done.text
    assert counts(done) == {"Observation": 3}, issues(done)
    text = "\n".join(i["diagnostics"] for i in issues(done)["issue"])
    assert f"DiagnosticReport/{report['id']}: reference(s) to {doomed[0][0]}/{doomed[0][1]} removed" in text
    now = httpx.get(f"{base}/DiagnosticReport/{report['id']}", headers=seeds.FHIR).json()
    assert {k: v for k, v in now.items() if k != "meta"} == {**report, "result": [ref(*kept_obs)]}
    assert seeds.present(base, doomed) == []
    assert seeds.snapshot(base, keep) == before
