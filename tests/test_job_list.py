"""``GET [base]/$async``: the job list through a real proxy in front of the Medplum engine, with
its filters, paging and authorization (a caller sees its own jobs; the operator sees every job).

The proxy runs no workers, so the jobs stay queued exactly as submitted."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest

from tests.helpers import AUTH, TOKEN

ALICE, BOB = "alice-token-123", "bob-token-456"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def static(name: str, token: str) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "operations": ["$purge"]}


@pytest.fixture
async def proxy(make_proxy: Any, medplum_base: str) -> str:
    return await make_proxy(medplum_base, jobs={"workers": 0},
                            auth={"admin_token": TOKEN, "max_concurrent_per_caller": 20,
                                  "tokens": [static("alice", ALICE), static("bob", BOB)]})


async def kick_off(http: httpx.AsyncClient, proxy: str, token: str) -> str:
    answer = await http.post(f"{proxy}/Patient/{uuid.uuid4().hex[:16]}/$purge?dryRun=true",
                             headers={**bearer(token), "Prefer": "respond-async"})
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"].rsplit("/", 1)[1]


def values(entry: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in entry["resource"]["parameter"]}


async def listed(http: httpx.AsyncClient, url: str, token: str, **params: str) -> dict[str, Any]:
    answer = await http.get(url, params=params or None, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/fhir+json")
    return answer.json()


async def test_each_caller_sees_its_own_jobs_and_the_operator_all(proxy: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        alices = [await kick_off(http, proxy, ALICE) for _ in range(3)]
        bobs = [await kick_off(http, proxy, BOB)]

        mine = await listed(http, f"{proxy}/$async", ALICE)
        assert mine["type"] == "searchset"
        assert [values(e)["id"] for e in mine["entry"]] == alices[::-1]  # newest first
        first = values(mine["entry"][0])
        assert first["status"] == "new" and first["operation"] == "$purge" and first["caller"] == "alice"
        assert first["target"].startswith("$purge Patient/") and first["target"].endswith("(dry run)")
        assert first["progress"] == "queued" and "createdAt" in first and "updatedAt" in first
        assert mine["entry"][0]["fullUrl"] == f"{proxy}/$async/{alices[-1]}"
        assert [values(e)["id"] for e in (await listed(http, f"{proxy}/$async", BOB))["entry"]] == bobs

        everyone = await listed(http, f"{proxy}/$async", TOKEN)
        assert {values(e)["id"] for e in everyone["entry"]} == set(alices + bobs)

        refused = await http.get(f"{proxy}/$async")
        assert refused.status_code == 401
        assert (await http.get(f"{proxy}/$async", headers=bearer("wrong"))).status_code == 403


async def test_filters_and_paging(proxy: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        jobs = [await kick_off(http, proxy, ALICE) for _ in range(5)]
        cancelled = await http.delete(f"{proxy}/$async/{jobs[0]}", headers=bearer(ALICE))
        assert cancelled.status_code == 202

        only = await listed(http, f"{proxy}/$async", ALICE, status="cancelled")
        assert [values(e)["id"] for e in only["entry"]] == [jobs[0]]
        assert values(only["entry"][0])["progress"] == "cancelled"
        assert len((await listed(http, f"{proxy}/$async", ALICE, status="new"))["entry"]) == 4
        assert (await listed(http, f"{proxy}/$async", ALICE, operation="$erase"))["entry"] == []
        assert len((await listed(http, f"{proxy}/$async", ALICE, operation="$purge"))["entry"]) == 5
        future = await listed(http, f"{proxy}/$async", ALICE, _since="2999-01-01T00:00:00Z")
        assert future["entry"] == []
        past = await listed(http, f"{proxy}/$async", ALICE, _since="2000-01-01T00:00:00Z")
        assert len(past["entry"]) == 5

        seen: list[str] = []
        url: str | None = f"{proxy}/$async?_count=2"
        pages = 0
        while url:
            page = await listed(http, url, ALICE)
            seen += [values(e)["id"] for e in page["entry"]]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            pages += 1
        assert pages == 3 and seen == jobs[::-1]

        for bad in ({"status": "done"}, {"_count": "0"}, {"_count": "x"}, {"_since": "yesterday"},
                    {"_since": "2026-01-01T00:00:00"}, {"patient": "x"}):
            answer = await http.get(f"{proxy}/$async", params=bad, headers=AUTH)
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["resourceType"] == "OperationOutcome"
