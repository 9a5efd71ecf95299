"""The job store's contract, on both backends: one active job per target, exclusive leases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from purgeproxy.jobs.backends import open_store
from purgeproxy.jobs.sql import SCHEMA, TABLE, numbered
from purgeproxy.jobs.store import (
    CANCELLED,
    COMPLETED,
    NEW,
    PROCESSING,
    JobFilter,
    JobStore,
    Quota,
    QuotaExceeded,
)
from purgeproxy.jobs.worker import JobOutcome, WorkerPool, WorkerSettings


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        location = str(tmp_path / "jobs.sqlite3")
    else:  # a database of its own, so that no other test's jobs are claimed here
        server = request.getfixturevalue("postgres_url")
        name = "t" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(server)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        location = server.rsplit("/", 1)[0] + "/" + name
    opened = open_store(location)
    await opened.open()
    yield opened
    await opened.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def test_one_active_job_per_target(store: JobStore) -> None:
    first, created = await store.submit(new_id(), "purge", "purge:Patient/a", {"patient_id": "a"})
    assert created and first.status == NEW and first.payload == {"patient_id": "a"}
    again, created = await store.submit(new_id(), "purge", "purge:Patient/a", {"patient_id": "a"})
    assert not created and again.id == first.id
    claimed = await store.claim("w1", 30)
    assert claimed is not None and claimed.id == first.id and claimed.status == PROCESSING
    assert await store.finish(first.id, "w1", COMPLETED, {"status": 200, "outcome": {}})
    later, created = await store.submit(new_id(), "purge", "purge:Patient/a", {})
    assert created and later.id != first.id  # finished jobs no longer block a new one


async def test_a_lease_is_exclusive_until_it_expires(store: JobStore) -> None:
    job, _ = await store.submit(new_id(), "purge", f"purge:Patient/{new_id()}", {})
    claims = await asyncio.gather(*(store.claim(f"w{i}", 0.5) for i in range(6)))
    winners = [c for c in claims if c is not None]
    assert [w.id for w in winners] == [job.id]
    owner = winners[0].owner
    assert await store.checkpoint(job.id, owner, 0.5, (10, 40))
    assert await store.claim("late", 30) is None
    await asyncio.sleep(0.7)  # the owner stopped heart-beating: the lease expires
    taken = await store.claim("late", 30)
    assert taken is not None and taken.id == job.id and taken.attempts == 2
    assert (taken.done, taken.total) == (10, 40)  # progress survives the hand-over
    assert not await store.checkpoint(job.id, owner, 30, (20, 40))  # the old owner lost it
    assert not await store.finish(job.id, owner, COMPLETED, {})


async def test_release_and_cancel(store: JobStore) -> None:
    job, _ = await store.submit(new_id(), "purge", f"purge:Patient/{new_id()}", {})
    assert (await store.claim("w1", 30)).id == job.id
    await store.release(job.id, "w1")
    assert (await store.claim("w2", 30)).id == job.id  # released: taken at once, no lease wait
    cancelled = await store.cancel(job.id)
    assert cancelled is not None and cancelled.status == CANCELLED
    assert not await store.checkpoint(job.id, "w2", 30)  # the worker learns at its next batch
    assert await store.finish(job.id, "w2", COMPLETED, {"status": 200, "outcome": {}})
    finished = await store.get(job.id)
    assert finished.status == CANCELLED and finished.result == {"status": 200, "outcome": {}}
    assert await store.cancel("no-such-job") is None and await store.get("no-such-job") is None


async def test_quotas_hold_when_replicas_submit_at_once(store: JobStore) -> None:
    """Two connections (two replicas) race six submits of one caller: exactly the quota wins."""
    twin = open_store(getattr(store, "path", None) or store.url)
    await twin.open()
    try:
        quota = Quota("alice", per_caller=2, total=100)
        tries = [(store if i % 2 else twin).submit(new_id(), "purge", f"purge:Patient/{new_id()}", {}, quota)
                 for i in range(6)]
        results = await asyncio.gather(*tries, return_exceptions=True)
        assert sum(1 for r in results if isinstance(r, tuple) and r[1]) == 2
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert len(refused) == 4 and {r.which for r in refused} == {"caller"}
        again, created = await store.submit(new_id(), "purge", results[next(
            i for i, r in enumerate(results) if isinstance(r, tuple))][0].target, {}, quota)
        assert not created  # the same target again is its active job, not a refusal
        bob = Quota("bob", per_caller=5, total=3)
        assert (await twin.submit(new_id(), "purge", f"purge:Patient/{new_id()}", {}, bob))[1]
        with pytest.raises(QuotaExceeded) as full:
            await store.submit(new_id(), "purge", f"purge:Patient/{new_id()}", {}, bob)
        assert (full.value.which, full.value.limit) == ("queue", 3)
    finally:
        await twin.close()


async def test_a_table_from_before_the_caller_column_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(path) as old:
        old.execute(SCHEMA[0].replace(", caller TEXT", ""))
    upgraded = open_store(path)
    await upgraded.open()
    job, created = await upgraded.submit(new_id(), "purge", "purge:Patient/x", {}, Quota("c", 1, 1))
    assert created and job.status == NEW
    await upgraded.close()


def test_workers_opening_one_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """``serve --workers 2`` with a new SQLite store: each worker creates and upgrades the schema
    at start. Before the schema was set up under one write lock, a worker could see a column
    missing that the other had just added and die ("duplicate column name: parent"; the
    switch to WAL answered "database is locked" at once too): 12 of 30 trials of four at once."""
    import threading

    from purgeproxy.jobs.sqlite import SqliteJobStore

    failures: list[str] = []
    for trial in range(10):
        path = str(tmp_path / f"jobs{trial}.sqlite3")
        stores = [SqliteJobStore(path) for _ in range(4)]
        together = threading.Barrier(len(stores))  # all four at once

        def open_it(store: SqliteJobStore, together: threading.Barrier) -> None:
            together.wait()
            try:
                store._connect()
            except Exception as error:  # noqa: BLE001 - each failure is the finding
                failures.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=open_it, args=(store, together)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for store in stores:
            if store._connection is not None:
                store._connection.close()
    assert failures == []


def test_named_parameters_become_numbered() -> None:
    sql, names = numbered("SELECT :a, :b::int, x::text, :a")
    assert sql == "SELECT $1, $2::int, x::text, $1" and names == ["a", "b"]


async def _age(store: JobStore, job_id: str, days: float) -> None:
    """Move a job's times ``days`` into the past, as if it had been left that long."""
    await store.fetch(f"UPDATE {TABLE} SET updated_at = updated_at - :age, created_at = created_at - :age "  # type: ignore[attr-defined]
                      "WHERE id = :id", {"age": days * 86400.0, "id": job_id})


async def test_list_filters_and_pages(store: JobStore) -> None:
    ids = []
    for caller in ("alice", "alice", "alice", "bob"):
        job, _ = await store.submit(new_id(), "$purge", f"$purge Patient/{new_id()}", {"caller": caller},
                                    Quota(caller, 10, 100))
        ids.append(job.id)
    await store.submit(new_id(), "$erase", f"$erase Patient/{new_id()}", {"caller": "alice"}, Quota("alice", 10, 100))
    claimed = await store.claim("w1", 30)  # the oldest: alice's first
    assert claimed is not None and claimed.id == ids[0]
    await store.finish(claimed.id, "w1", COMPLETED, {"status": 200, "outcome": {}})
    await _age(store, ids[0], 2)

    alice = await store.list_jobs(JobFilter(caller="alice"), 10)
    assert len(alice) == 4 and all(job.payload["caller"] == "alice" for job in alice)
    assert [job.created_at for job in alice] == sorted((job.created_at for job in alice), reverse=True)
    assert [job.id for job in await store.list_jobs(JobFilter(status=COMPLETED), 10)] == [ids[0]]
    assert len(await store.list_jobs(JobFilter(operation="$purge"), 10)) == 4
    assert len(await store.list_jobs(JobFilter(caller="alice", operation="$purge", status=NEW), 10)) == 2
    day_ago = datetime.now(UTC) - timedelta(days=1)
    assert ids[0] not in {job.id for job in await store.list_jobs(JobFilter(since=day_ago), 10)}
    pages = [await store.list_jobs(JobFilter(), 2, offset) for offset in (0, 2, 4)]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert len({job.id for page in pages for job in page}) == 5


async def test_retention_removes_old_finished_jobs_only(store: JobStore) -> None:
    """The workers' sweep removes a finished job older than retention_days; a running job as old
    and a recently finished one stay."""
    old_done, _ = await store.submit(new_id(), "$purge", f"$purge Patient/{new_id()}", {})
    recent_done, _ = await store.submit(new_id(), "$purge", f"$purge Patient/{new_id()}", {})
    running, _ = await store.submit(new_id(), "$purge", f"$purge Patient/{new_id()}", {})
    for job in (old_done, recent_done):
        assert (await store.claim("w1", 30)).id == job.id
        await store.finish(job.id, "w1", COMPLETED, {"status": 200, "outcome": {}})
    assert (await store.claim("w1", 3600)).id == running.id  # held by a live worker
    await _age(store, old_done.id, 31)
    await _age(store, running.id, 31)
    await _age(store, recent_done.id, 29)

    pool = WorkerPool(store, {}, WorkerSettings(1, 3600, 0.05, 5, retention_seconds=30 * 86400.0))
    pool.start()
    try:
        for _ in range(100):
            if await store.get(old_done.id) is None:
                break
            await asyncio.sleep(0.05)
    finally:
        await pool.stop(grace=1)
    assert await store.get(old_done.id) is None
    assert (await store.get(running.id)).status == PROCESSING
    assert (await store.get(recent_done.id)).status == COMPLETED


async def test_children_without_answers_carry_progress_only(store: JobStore) -> None:
    """The parent's poll and its status read every child: without payload and result they are a
    few columns, not the children's whole answers (some 60 KB each)."""
    parent, _ = await store.submit(new_id(), "$bulk-purge", f"patients {new_id()}", {"patients": ["a", "b"]})
    answer = {"status": 200, "outcome": {"issue": [{"diagnostics": "x" * 1000}]}}
    for index, patient in enumerate(("a", "b")):
        await store.submit_child(f"{parent.id}-{index:05d}", parent.id, "$purge", f"$purge Patient/{patient}-{parent.id}",
                                 {"request": {"patient_id": patient}})
    first = await store.claim_child(parent.id, "w1", 30)
    assert first is not None and await store.checkpoint(first.id, "w1", 30, (40, 50))
    assert await store.finish(first.id, "w1", COMPLETED, answer, 50)
    light = await store.children(parent.id, answers=False)
    full = await store.children(parent.id)
    assert [c.id for c in light] == [c.id for c in full] == [f"{parent.id}-00000", f"{parent.id}-00001"]
    assert [(c.status, c.done, c.total, c.parent) for c in light] == [(c.status, c.done, c.total, c.parent) for c in full]
    assert [(c.payload, c.result) for c in light] == [({}, None), ({}, None)]
    assert full[0].result == answer and full[1].payload == {"request": {"patient_id": "b"}}


async def test_a_job_ending_wakes_whoever_waits_on_the_pool(store: JobStore) -> None:
    """A fan-out parent waiting on its children hears of one that ends in its own process at once,
    not at its next poll (here a poll of an hour)."""
    release = asyncio.Event()

    async def runner(_job: Any, _checkpoint: Any) -> JobOutcome:
        await release.wait()
        return JobOutcome(COMPLETED, 200, {"resourceType": "OperationOutcome", "issue": []})

    pool = WorkerPool(store, {"op": runner}, WorkerSettings(1, 3600, 3600, 5))
    job, _ = await store.submit(new_id(), "op", f"op {new_id()}", {})
    claimed = await store.claim("w1", 3600)
    assert claimed is not None and claimed.id == job.id
    running = asyncio.create_task(pool.run_claimed(claimed, "w1"))
    waiting = asyncio.create_task(pool.until_a_job_ends(3600))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    started = time.monotonic()
    release.set()
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 1
    await running
    assert (await store.get(job.id)).status == COMPLETED


async def test_a_job_ending_before_the_wait_is_not_missed(store: JobStore) -> None:
    """The parent takes the pool's job-end signal, reads the store, then waits: a child that ended
    between the read and the wait wakes it at once (a lost wake-up cost a whole poll)."""

    async def runner(_job: Any, _checkpoint: Any) -> JobOutcome:
        return JobOutcome(COMPLETED, 200, {"resourceType": "OperationOutcome", "issue": []})

    pool = WorkerPool(store, {"op": runner}, WorkerSettings(1, 3600, 3600, 5))
    await store.submit(new_id(), "op", f"op {new_id()}", {})
    ending = pool.job_end()
    claimed = await store.claim("w1", 3600)
    assert claimed is not None
    await pool.run_claimed(claimed, "w1")  # ends before anyone waits
    started = time.monotonic()
    await asyncio.wait_for(pool.until_a_job_ends(3600, ending), 5)
    assert time.monotonic() - started < 1
