"""A fan-out job survives a ``kill -9`` of a replica: two ``purgeproxy serve`` sharing a
PostgreSQL store in front of each real upstream (the Medplum engine, HAPI with hard delete); the
replica running children is killed, and the other finishes them (their leases expire) and the
parent, with the control patients byte-identical, history included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx

from tests import seed as seeds
from tests.helpers import AUTH, texts
from tests.served import Proxy, serving
from tests.test_async_crash import BATCH, _config, _purged, _result, _wait_for_progress, postgres_store  # noqa: F401 - the fixture, shared

# HAPI hard-deletes some 40 resources/s here: a smaller cohort there still lets the kill land
# mid-job (a quarter in) without a minute-long run
SIZES = {"medplum": {"Observation": 400, "Encounter": 5, "Condition": 20},
         "hapi": {"Observation": 60, "Encounter": 3, "Condition": 10}}


def _kick_off(proxy: Proxy, patients: list[str]) -> str:
    body = {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": p} for p in patients]}
    answer = httpx.post(f"{proxy.base}/Patient/$bulk-purge", json=body,
                        headers={**AUTH, "Prefer": "respond-async"}, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"].rsplit("/", 1)[1]


async def _owners(store: str, job_id: str) -> list[int]:
    """The process of each of the job's running children (host:pid:nonce/worker)."""
    connection = await asyncpg.connect(store)
    rows = await connection.fetch("SELECT owner FROM purgeproxy_jobs WHERE parent = $1 AND status = 'processing'",
                                  job_id)
    await connection.close()
    return [int(row["owner"].split(":")[1]) for row in rows if row["owner"]]


async def test_children_move_to_the_surviving_replica(upstream: tuple[str, str], tmp_path: Path,
                                                      postgres_store: str) -> None:  # noqa: F811
    kind, base = upstream
    built = [seeds.build(sizes=SIZES[kind], shared=False) for _ in range(4)]
    for seed in built:
        seeds.write(base, seed.resources)
    keep = [key for seed in built for key in seed.untouchable]
    before = seeds.snapshot(base, keep)
    total = sum(len(seed.in_scope) for seed in built)
    # one delete transaction in flight per child, so a killed child leaves at most one batch
    # uncounted (the count bound below); test_async_crash covers several in flight
    config = _config(tmp_path, base, postgres_store, transactions=1)
    with serving(config, tmp_path) as one, serving(config, tmp_path) as two:
        job_id = _kick_off(one, [seed.patient for seed in built])
        killed_at = await asyncio.to_thread(_wait_for_progress, two, job_id, total // 4, 180)
        owners = await _owners(postgres_store, job_id)
        victim, survivor = (one, two) if one.process.pid in owners else (two, one)
        assert victim.process.pid in owners  # it was running a child when it died
        victim.kill()
        response = await asyncio.to_thread(_result, survivor, job_id, 240)
        final = await asyncio.to_thread(_purged, survivor, job_id)
    assert response["status"] == "200 OK"
    assert response["outcome"]["issue"][0]["code"] == "success", texts(response["outcome"])
    assert "All 4 patient(s) purged completely" in texts(response["outcome"])
    for seed in built:
        assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, keep) == before
    # each child the victim was running may have deleted one batch it had not yet checkpointed:
    # gone (verified above) but counted by nobody
    held = owners.count(victim.process.pid)
    assert killed_at < final and total - BATCH * held <= final <= total
    print(f"\n[fan-out postgresql, {kind}] {total} resources over 4 patients; killed at {killed_at}", flush=True)
