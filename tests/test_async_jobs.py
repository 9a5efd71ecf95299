"""Asynchronous ``$purge`` (``Prefer: respond-async``) against the real Medplum engine:
kick-off, polling with progress, the result Bundle, cancel, duplicates, unknown jobs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, kick_off, texts, until_done


@pytest.fixture
async def proxy(make_proxy: Any, medplum_base: str) -> str:
    return await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"batch_size": 5},
                            jobs={"poll_seconds": 0.2, "retry_after_seconds": 1})


async def poll(url: str, progress: list[str] | None = None, timeout: float = 120) -> httpx.Response:
    """GET the status URL until it stops answering 202; collects X-Progress on the way."""
    def running(answer: httpx.Response) -> None:
        assert answer.headers["Retry-After"] == "1"
        if progress is not None:
            progress.append(answer.headers["X-Progress"])

    async with httpx.AsyncClient(timeout=60) as http:
        return await until_done(http, url, timeout=timeout, pause=0.05, each=running)


async def kodjin(proxy: str, job_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.get(f"{proxy}/patient-purge/{job_url.rsplit('/', 1)[1]}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in answer.json()["parameter"]}


async def test_kick_off_progress_and_result(proxy: str, medplum_base: str) -> None:
    seed = seeds.build(shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.untouchable)

    accepted = await kick_off(proxy, seed.patient)
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["Content-Location"]
    assert re.fullmatch(re.escape(proxy) + r"/\$async/[0-9a-f]{32}", url)
    assert accepted.json()["issue"][0]["code"] == "informational"
    again = await kick_off(proxy, seed.patient)  # the same patient while the job is active
    assert again.status_code == 202 and again.headers["Content-Location"] == url
    assert "already" in again.json()["issue"][0]["diagnostics"]

    progress: list[str] = []
    done = await poll(url, progress)
    assert done.status_code == 200
    bundle = done.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch-response"
    response = bundle["entry"][0]["response"]
    assert response["status"] == "200 OK"
    assert response["outcome"]["issue"][0]["code"] == "success", texts(response["outcome"])
    assert "Observation: 200 deleted" in texts(response["outcome"])  # the synchronous report
    counts = [tuple(map(int, m.groups())) for m in map(re.compile(r"purged (\d+) of (\d+)").fullmatch, progress) if m]
    assert counts and all(0 <= d <= t for d, t in counts), progress
    assert seeds.present(medplum_base, seed.in_scope) == []
    assert seeds.snapshot(medplum_base, seed.untouchable) == before

    status = await kodjin(proxy, url)
    assert status["patientId"] == seed.patient and status["status"] == "completed"
    assert status["purgedResourcesCount"] == status["totalResourcesCount"] == len(seed.in_scope)
    assert (await kick_off(proxy, seed.patient)).headers["Content-Location"] != url  # finished: a new job


async def test_cancel_stops_after_the_batch_in_flight(proxy: str, medplum_base: str) -> None:
    seed = seeds.build(sizes={"Observation": 1500}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.untouchable)
    url = (await kick_off(proxy, seed.patient, "?confirm=true")).headers["Content-Location"]  # > max_without_confirm
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(1200):  # at most a minute
            status = await kodjin(proxy, url)
            if status["purgedResourcesCount"] or status["status"] not in ("new", "processing"):
                break
            await asyncio.sleep(0.05)
        assert status["status"] == "processing", status
        cancelled = await http.delete(url, headers=AUTH)
        assert cancelled.status_code == 202, cancelled.text
        assert "had been removed" in cancelled.json()["issue"][0]["diagnostics"]
        assert (await http.get(url, headers=AUTH)).status_code == 404
        assert (await http.delete(url, headers=AUTH)).status_code == 404
    await asyncio.sleep(1.0)  # the batch in flight ends; nothing after it
    left = seeds.present(medplum_base, seed.in_scope)
    await asyncio.sleep(1.0)
    assert seeds.present(medplum_base, seed.in_scope) == left and left
    status = await kodjin(proxy, url)
    assert status["status"] == "cancelled"
    assert status["purgedResourcesCount"] == len(seed.in_scope) - len(left)
    assert seeds.snapshot(medplum_base, seed.untouchable) == before


async def test_unknown_jobs_and_callers_without_a_token(proxy: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for method, path in [("GET", "$async/nope"), ("DELETE", "$async/nope"), ("GET", "patient-purge/nope")]:
            assert (await http.request(method, f"{proxy}/{path}", headers=AUTH)).status_code == 404
            assert (await http.request(method, f"{proxy}/{path}")).status_code == 401


@pytest.mark.parametrize("query, headers, status", [
    ("?dryRun=maybe", ASYNC, 400),
    ("?color=red", ASYNC, 400),
    ("", {"Prefer": "respond-async"}, 401),
    ("", {"Prefer": "respond-async", "Authorization": "Bearer wrong"}, 403),
])
async def test_bad_requests_are_refused_before_a_job_is_stored(proxy: str, query: str,
                                                               headers: dict[str, str], status: int) -> None:
    answer = await kick_off(proxy, "whoever", query, headers)
    assert answer.status_code == status and "Content-Location" not in answer.headers


async def test_an_async_dry_run_reports_and_deletes_nothing(proxy: str, medplum_base: str) -> None:
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    url = (await kick_off(proxy, seed.patient, "?dryRun=true")).headers["Content-Location"]
    outcome = (await poll(url)).json()["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["code"] == "informational", texts(outcome)
    assert seeds.present(medplum_base, seed.in_scope) == seed.in_scope


async def test_the_confirmation_rail_is_answered_before_the_job(make_proxy: Any, medplum_base: str) -> None:
    """Without confirm=true the kick-off plans, and refuses with the synchronous path's 422 rather
    than accepting a job that can only fail (tests/test_exact_errors.py has the job-side case)."""
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 2},
                             jobs={"poll_seconds": 0.2, "retry_after_seconds": 1})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    refused = await kick_off(proxy, seed.patient)
    assert refused.status_code == 422 and "Content-Location" not in refused.headers
    assert "confirm=true" in texts(refused.json())
    assert seeds.present(medplum_base, seed.in_scope) == seed.in_scope
    confirmed = (await kick_off(proxy, seed.patient, "?confirm=true")).headers["Content-Location"]
    assert (await poll(confirmed)).json()["entry"][0]["response"]["outcome"]["issue"][0]["code"] == "success"
    assert seeds.present(medplum_base, seed.in_scope) == []


async def test_read_only_mode_refuses_purges_but_still_answers_status(make_proxy, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, safety={"read_only": True})
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.post(f"{proxy}/Patient/p/$purge", headers=ASYNC)).status_code == 403
        assert (await http.get(f"{proxy}/$async/nope", headers=AUTH)).status_code == 404
        assert (await http.delete(f"{proxy}/$async/nope", headers=AUTH)).status_code == 404
