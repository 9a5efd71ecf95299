"""Jobs in a store shared by several proxies: a read-only one never runs them; per-caller and
whole-queue limits count queued and running jobs, across replicas, and answer 429 past them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests import seed as seeds
from tests.test_async_jobs import ASYNC, kick_off
from tests.test_purge import AUTH, TOKEN

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
