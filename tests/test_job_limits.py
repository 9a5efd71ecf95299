"""Jobs in a store shared by several proxies: a read-only one never runs them; per-caller and
whole-queue limits count queued and running jobs, across replicas, and answer 429 past them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, kick_off

OTHER = "second-caller-token"
OTHER_ASYNC = {"Authorization": f"Bearer {OTHER}", "Prefer": "respond-async"}


async def test_a_read_only_proxy_never_runs_a_job_another_proxy_queued(
        make_proxy: Any, medplum_base: str, tmp_path: Path) -> None:
    store = str(tmp_path / "shared.sqlite3")
    writer = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, jobs={"store": store, "workers": 0})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.in_scope + seed.untouchable)

    accepted = await kick_off(writer, seed.patient)
    assert accepted.status_code == 202, accepted.text
    job = accepted.headers["Content-Location"].rsplit("/", 1)[1]
    reader = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, safety={"read_only": True},
                              jobs={"store": store, "workers": 4, "poll_seconds": 0.1})
    await asyncio.sleep(2.0)  # twenty polls of four idle workers

    async with httpx.AsyncClient(timeout=60) as http:
        status = await http.get(f"{reader}/$async/{job}", headers=AUTH)
        assert status.status_code == 202 and status.headers["X-Progress"] == "queued", status.text
        assert seeds.snapshot(medplum_base, seed.in_scope + seed.untouchable) == before
        cancelled = await http.delete(f"{reader}/$async/{job}", headers=AUTH)  # still possible
        assert cancelled.status_code == 202, cancelled.text
        assert (await http.get(f"{reader}/$async/{job}", headers=AUTH)).status_code == 404


def _sha256(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def _two_callers(store: str, per_caller: int, max_queued: int = 100) -> dict[str, Any]:
    """Two static tokens, and no workers: every accepted job stays queued."""
    return {"auth": {"admin_token": TOKEN, "max_concurrent_per_caller": per_caller, "retry_after_seconds": 7,
                     "tokens": [{"name": "second", "sha256": _sha256(OTHER), "operations": ["$purge"]}]},
            "jobs": {"store": store, "workers": 0, "max_queued": max_queued}}


def _patient() -> str:
    return "p" + uuid.uuid4().hex[:12]


def _throttled(answer: httpx.Response, retry_after: str) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["Retry-After"] == retry_after
    assert answer.json()["issue"][0]["code"] == "throttled"
    assert "Content-Location" not in answer.headers


async def test_the_per_caller_limit_counts_queued_jobs_on_every_replica(
        make_proxy: Any, medplum_base: str, tmp_path: Path) -> None:
    store = str(tmp_path / "shared.sqlite3")
    first = await make_proxy(medplum_base, **_two_callers(store, per_caller=1))
    second = await make_proxy(medplum_base, **_two_callers(store, per_caller=1))
    queued = await kick_off(first, _patient())
    assert queued.status_code == 202, queued.text
    _throttled(await kick_off(first, _patient()), "7")
    _throttled(await kick_off(second, _patient()), "7")  # the other replica counts it too
    assert (await kick_off(second, _patient(), headers=OTHER_ASYNC)).status_code == 202  # another caller
    async with httpx.AsyncClient(timeout=60) as http:  # once the job is gone, the slot is free
        assert (await http.delete(queued.headers["Content-Location"], headers=AUTH)).status_code == 202
    assert (await kick_off(first, _patient())).status_code == 202


async def test_the_same_purge_asked_again_finds_its_job_rather_than_a_429(
        make_proxy: Any, medplum_base: str, tmp_path: Path) -> None:
    proxy = await make_proxy(medplum_base, **_two_callers(str(tmp_path / "jobs.sqlite3"), per_caller=1))
    patient = _patient()
    queued = await kick_off(proxy, patient)
    again = await kick_off(proxy, patient)
    assert again.status_code == 202 and again.headers["Content-Location"] == queued.headers["Content-Location"]


async def test_the_whole_queue_is_bounded(make_proxy: Any, medplum_base: str, tmp_path: Path) -> None:
    proxy = await make_proxy(medplum_base, **_two_callers(str(tmp_path / "jobs.sqlite3"), per_caller=5,
                                                           max_queued=2))
    assert (await kick_off(proxy, _patient())).status_code == 202
    assert (await kick_off(proxy, _patient(), headers=OTHER_ASYNC)).status_code == 202
    for headers in (ASYNC, OTHER_ASYNC):
        _throttled(await kick_off(proxy, _patient(), headers=headers), "7")


async def test_a_synchronous_operation_counts_the_callers_queued_jobs(
        make_proxy: Any, medplum_base: str, tmp_path: Path) -> None:
    proxy = await make_proxy(medplum_base, **_two_callers(str(tmp_path / "jobs.sqlite3"), per_caller=1))
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    seeds.write(medplum_base, seed.resources)
    assert (await kick_off(proxy, _patient())).status_code == 202
    _throttled(await kick_off(proxy, seed.patient, headers=AUTH), "7")  # synchronous, same caller
    assert seeds.present(medplum_base, seed.in_scope) == seed.in_scope
    other = {"Authorization": f"Bearer {OTHER}"}
    assert (await kick_off(proxy, seed.patient, headers=other)).status_code == 200
    assert seeds.present(medplum_base, seed.in_scope) == []
