"""Asynchronous purges survive a ``kill -9`` of the proxy: a real ``purgeproxy serve`` in front of
the Medplum engine, killed mid-job, and the job finishes (after a restart with SQLite, or on the
surviving replica with PostgreSQL) with nothing in scope left and nothing else touched."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import seed as seeds
from tests.helpers import AUTH, TOKEN, texts
from tests.log_capture import events_in
from tests.served import Proxy, serving

BATCH = 10
TRANSACTIONS = 4  # purge.transaction_concurrency: delete transactions in flight at once
# what a killed replica can have deleted without checkpointing it: every batch then in flight
# (CI once counted 3,051 of 3,071 after a SIGKILL: two batches of 10 lost with the process)
UNCOUNTED = BATCH * TRANSACTIONS
OBSERVATIONS = 3000
LEASE = 2.0


def _config(tmp_path: Path, upstream: str, store: str, lease: float = LEASE,
            transactions: int = TRANSACTIONS) -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        f"upstream: {{url: '{upstream}'}}\nauth: {{admin_token: '{TOKEN}'}}\n"
        f"purge: {{batch_size: {BATCH}, transaction_concurrency: {transactions}, max_rounds: 40}}\nlogging: {{level: info}}\n"
        f"jobs: {{store: '{store}', lease_seconds: {lease}, poll_seconds: 0.2}}\n")
    return path


def _big_patient(upstream: str) -> tuple[seeds.Seed, dict[seeds.Key, bytes]]:
    seed = seeds.build(sizes={"Observation": OBSERVATIONS, "Encounter": 20, "Condition": 50}, shared=True)
    seeds.write(upstream, seed.resources)
    return seed, seeds.snapshot(upstream, seed.untouchable)


def _kick_off(proxy: Proxy, patient: str) -> str:
    answer = httpx.post(f"{proxy.base}/Patient/{patient}/$purge?confirm=true",  # > max_without_confirm
                        headers={**AUTH, "Prefer": "respond-async"},
                        timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"].rsplit("/", 1)[1]


def _purged(proxy: Proxy, job_id: str) -> int:
    answer = httpx.get(f"{proxy.base}/patient-purge/{job_id}", headers=AUTH, timeout=30)
    return next(p["valueInteger"] for p in answer.json()["parameter"] if p["name"] == "purgedResourcesCount")


def _wait_for_progress(proxy: Proxy, job_id: str, at_least: int, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        purged = _purged(proxy, job_id)
        if purged >= at_least:
            return purged
        time.sleep(0.05)
    lines = "\n".join(line for line in proxy.log.read_text().splitlines() if "job_" in line)
    raise AssertionError(f"no progress ({_status(proxy, job_id)}):\n" + lines[-4000:])


def _result(proxy: Proxy, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{proxy.base}/$async/{job_id}", headers=AUTH, timeout=30)
        if answer.status_code == 200:
            return answer.json()["entry"][0]["response"]
        assert answer.status_code == 202, answer.text
        time.sleep(0.1)
    raise AssertionError(f"the job did not finish:\n{proxy.log.read_text()[-3000:]}")


def _assert_clean(upstream: str, seed: seeds.Seed, before: dict, response: dict) -> None:
    assert response["status"] == "200 OK"
    assert response["outcome"]["issue"][0]["code"] == "success", texts(response["outcome"])
    assert seeds.present(upstream, seed.in_scope) == []
    assert seeds.snapshot(upstream, seed.untouchable) == before


def _report(name: str, total: int, killed_at: int, seconds: float) -> None:
    print(f"\n[{name}] {total} resources in scope; killed at {killed_at} purged; "
          f"resumed and finished in {seconds:.1f}s", flush=True)


def test_sqlite_job_resumes_after_kill_9_and_restart(medplum_base: str, tmp_path: Path) -> None:
    seed, before = _big_patient(medplum_base)
    config = _config(tmp_path, medplum_base, str(tmp_path / "jobs.sqlite3"))
    with serving(config, tmp_path) as first:
        job_id = _kick_off(first, seed.patient)
        killed_at = _wait_for_progress(first, job_id, len(seed.in_scope) // 3)
        first.kill()
    left = seeds.present(medplum_base, seed.in_scope)
    assert 0 < len(left) < len(seed.in_scope) - killed_at + BATCH  # really mid-job, and it stopped
    started = time.monotonic()
    with serving(config, tmp_path) as second:
        response = _result(second, job_id)
        resumed = time.monotonic() - started
        purged = _purged(second, job_id)
        metrics = httpx.get(second.base.rsplit("/fhir", 1)[0] + "/metrics", timeout=30).text
    assert 'purgeproxy_job_leases_taken_over_total{operation="$purge"} 1.0' in metrics  # the dead one's lease
    assert 'purgeproxy_jobs_finished_total{operation="$purge",status="completed"} 1.0' in metrics
    _assert_clean(medplum_base, seed, before, response)
    assert len(seed.in_scope) - UNCOUNTED <= purged <= len(seed.in_scope)  # counters continued
    reported = int(re.search(r"\(at least (\d+) deleted\)", response["outcome"]["issue"][0]["diagnostics"]).group(1))
    assert len(seed.in_scope) - UNCOUNTED <= reported <= len(seed.in_scope)  # both attempts, not the last one's
    assert "were removed by earlier attempts of this job" in texts(response["outcome"])
    _report("sqlite", len(seed.in_scope), killed_at, resumed)


@pytest.fixture
async def postgres_store(postgres_url: str) -> str:
    """A fresh database on the shared test server: no other test's jobs."""
    name = "crash" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


async def _owner_pid(store: str, job_id: str) -> int:
    connection = await asyncpg.connect(store)
    owner = await connection.fetchval("SELECT owner FROM purgeproxy_jobs WHERE id = $1", job_id)
    await connection.close()
    return int(owner.split(":")[1])  # host:pid:nonce/worker


async def test_postgres_job_moves_to_the_surviving_replica(medplum_base: str, tmp_path: Path,
                                                           postgres_store: str) -> None:
    seed, before = _big_patient(medplum_base)
    config = _config(tmp_path, medplum_base, postgres_store)
    with serving(config, tmp_path) as one, serving(config, tmp_path) as two:
        job_id = _kick_off(one, seed.patient)  # either replica may claim it
        killed_at = await asyncio.to_thread(_wait_for_progress, two, job_id, len(seed.in_scope) // 3)
        pid = await _owner_pid(postgres_store, job_id)
        victim, survivor = (one, two) if pid == one.process.pid else (two, one)
        assert pid == victim.process.pid
        victim.kill()
        started = time.monotonic()
        response = await asyncio.to_thread(_result, survivor, job_id)
        resumed = time.monotonic() - started
        assert await _owner_pid(postgres_store, job_id) == survivor.process.pid
        purged = await asyncio.to_thread(_purged, survivor, job_id)
    _assert_clean(medplum_base, seed, before, response)
    assert len(seed.in_scope) - UNCOUNTED <= purged <= len(seed.in_scope)
    _report("postgresql", len(seed.in_scope), killed_at, resumed)


def test_sigterm_checkpoints_and_releases_the_lease(medplum_base: str, tmp_path: Path) -> None:
    """A graceful stop gives the lease back: the next process resumes at once, not after 60 s."""
    seed, before = _big_patient(medplum_base)
    config = _config(tmp_path, medplum_base, str(tmp_path / "jobs.sqlite3"), lease=60)
    with serving(config, tmp_path) as first:
        job_id = _kick_off(first, seed.patient)
        _wait_for_progress(first, job_id, len(seed.in_scope) // 3)
        first.process.terminate()
        assert first.process.wait(30) == 0
    assert "job_released" in [event["event"] for event in events_in(first.log.read_text())]
    started = time.monotonic()
    with serving(config, tmp_path) as second:
        response = _result(second, job_id, timeout=50)
        assert time.monotonic() - started < 50
        purged = _purged(second, job_id)
    _assert_clean(medplum_base, seed, before, response)
    assert purged == len(seed.in_scope)  # the batch in flight was checkpointed before the release


def _status(proxy: Proxy, job_id: str) -> str:
    return httpx.get(f"{proxy.base}/patient-purge/{job_id}", headers=AUTH, timeout=30).text
