"""Many patients at once: ``Patient/$bulk-purge`` (fan-out jobs) against the same purges run one by
one through ``Patient/[id]/$purge``, on the Medplum engine and on HAPI (hard delete, ``$expunge``).

Three runs per upstream, each on its own freshly seeded cohort of ``patients`` patients of
``size`` resources (the size of a synthetic patient record): one by one (synchronous ``$purge``,
one after another, one proxy), batch on one proxy (SQLite store), batch on two proxies sharing a
PostgreSQL store (kick-off on one; children are claimed by both). Every run must end with every
patient purged completely (checked from the outcome). The figure is resources removed per second
of wall time. PASS/FAIL: the batch path at least as fast per resource as one by one, and two
replicas not slower than one (within 10 %: runs on a shared two-core machine move by that much).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.purge import hapi, medplum, patient_resources, write
from bench.report import Section
from bench.targets import Processes, free_port, wait_ready

TOKEN = "bench-bulk-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Settings:
    patients: int = 12
    size: int = 650
    hapi: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(patients=3, size=100)


@dataclass
class Row:
    upstream: str
    mode: str
    patients: int
    resources: int
    seconds: float
    complete: bool
    note: str = ""

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


@dataclass
class Bulk:
    settings: Settings
    procs: Processes
    say: Callable[[str], None]
    rows: list[Row] = field(default_factory=list)

    def cohort(self, base: str) -> tuple[list[str], int]:
        """A freshly seeded cohort: its patient ids and how many resources it holds."""
        ids, total = [], 0
        for _ in range(self.settings.patients):
            tag = "b" + uuid.uuid4().hex[:10]
            resources = patient_resources(tag, self.settings.size)
            write(base, resources)
            ids.append(f"{tag}-p")
            total += len(resources)
        return ids, total

    def proxy(self, upstream: str, store: str, name: str) -> str:
        port = free_port()
        config = self.procs.workdir / f"bulk-{name}-{port}.yaml"
        config.write_text(f"upstream: {{url: '{upstream}'}}\nserver: {{host: 127.0.0.1, port: {port}}}\n"
                          f"logging: {{level: warning}}\nauth: {{admin_token: {TOKEN}}}\n"
                          f"jobs: {{store: '{store}', poll_seconds: 0.2}}\n")
        child = self.procs.start(f"bulk-{name}-{port}", [sys.executable, "-m", "purgeproxy", "serve",
                                                         "--config", str(config)])
        wait_ready(child, f"http://127.0.0.1:{port}/healthz", timeout=60)
        return f"http://127.0.0.1:{port}/fhir"

    def one_by_one(self, kind: str, proxy: str, ids: list[str], total: int) -> None:
        started, complete = time.perf_counter(), True
        with httpx.Client(timeout=3600, headers=AUTH) as http:
            for pid in ids:
                answer = http.post(f"{proxy}/Patient/{pid}/$purge?confirm=true")
                complete &= answer.status_code == 200 and answer.json()["issue"][0]["code"] == "success"
        self.rows.append(Row(kind, "one by one: Patient/[id]/$purge", len(ids), total,
                             time.perf_counter() - started, complete))

    def batch(self, kind: str, proxy: str, ids: list[str], total: int, mode: str) -> None:
        body = {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": p} for p in ids]
                + [{"name": "confirm", "valueBoolean": True}]}
        started = time.perf_counter()
        with httpx.Client(timeout=600, headers=AUTH) as http:
            accepted = http.post(f"{proxy}/Patient/$bulk-purge", json=body, headers={"Prefer": "respond-async"})
            if accepted.status_code != 202:
                raise RuntimeError(f"bulk purge refused: {accepted.text[:500]}")
            url = f"{proxy}/$async/{accepted.headers['Content-Location'].rsplit('/', 1)[1]}"
            while (answer := http.get(url)).status_code == 202:
                time.sleep(0.1)
        seconds = time.perf_counter() - started
        outcome = answer.json()["entry"][0]["response"]["outcome"] if answer.status_code == 200 else {}
        complete = (outcome.get("issue") or [{}])[0].get("code") == "success"
        self.rows.append(Row(kind, mode, len(ids), total, seconds, complete,
                             "" if complete else str((outcome.get("issue") or [{}])[0].get("diagnostics", ""))[:200]))

    def upstream(self, kind: str, base: str, postgres: str) -> None:
        sqlite = str(self.procs.workdir / f"bulk-{uuid.uuid4().hex[:8]}.sqlite3")
        single = self.proxy(base, sqlite, "single")
        self.say(f"bulk: {kind}: seeding {self.settings.patients} x {self.settings.size}, one by one")
        self.one_by_one(kind, single, *self.cohort(base))
        self.say(f"bulk: {kind}: batch, one proxy")
        self.batch(kind, single, *self.cohort(base), "batch: Patient/$bulk-purge, one proxy")
        database = f"bulk{uuid.uuid4().hex[:12]}"
        _create_database(postgres, database)
        shared = postgres.rsplit("/", 1)[0] + "/" + database
        first, _second = self.proxy(base, shared, "a"), self.proxy(base, shared, "b")
        self.say(f"bulk: {kind}: batch, two proxies sharing PostgreSQL")
        self.batch(kind, first, *self.cohort(base), "batch: two proxies, shared PostgreSQL")


def _create_database(url: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        admin = await asyncpg.connect(url)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()

    asyncio.run(create())


@contextmanager
def _postgres() -> Iterator[str]:
    from tests.upstreams.postgres import running_postgres

    with running_postgres() as url:
        yield url


def run(procs: Processes, settings: Settings, _docs: Path, say: Callable[[str], None]) -> Section:
    bench = Bulk(settings, procs, say)
    started = time.monotonic()
    with _postgres() as postgres:
        with medplum() as base:
            bench.upstream("Medplum engine", base, postgres)
        if settings.hapi:
            with hapi() as base:
                bench.upstream("HAPI (hard delete)", base, postgres)
    return Section("Many patients: bulk purge", _body(bench.rows, settings, time.monotonic() - started))


def verdicts(rows: list[Row]) -> list[str]:
    """Per upstream: batch (one proxy) >= one by one per resource; two proxies >= 0.9 x one."""
    lines = []
    for upstream in dict.fromkeys(row.upstream for row in rows):
        mine = [row for row in rows if row.upstream == upstream]
        if len(mine) < 3:
            continue
        single, one, two = mine
        ok_batch = one.complete and single.complete and one.rate >= single.rate
        ok_two = two.complete and two.rate >= 0.9 * one.rate
        lines.append(f"- {upstream}: batch {one.rate:.0f}/s vs one by one {single.rate:.0f}/s: "
                     f"**{'PASS' if ok_batch else 'FAIL'}**; two replicas {two.rate:.0f}/s vs one "
                     f"{one.rate:.0f}/s: **{'PASS' if ok_two else 'FAIL'}**")
    return lines


def _body(rows: list[Row], settings: Settings, seconds: float) -> str:
    table = ["| upstream | mode | patients | resources | seconds | resources/s | complete |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r.upstream} | {r.mode} | {r.patients} | {r.resources:,} | {r.seconds:.1f} | {r.rate:.0f} | "
              f"{'yes' if r.complete else 'no: ' + r.note} |" for r in rows]
    return "\n".join([
        f"`python -m bench --only bulk --bulk-patients {settings.patients}`: {settings.patients} patients of "
        f"{settings.size} resources per run, a fresh cohort per run; defaults of purgeproxy (batch 100, "
        f"`purge.concurrency` 4, 4 job workers per proxy). Scenario time {seconds:.0f} s.", "",
        *table, "", *verdicts(rows), "",
        "Two replicas share one two-core machine with the upstream (and PostgreSQL): the upstream's "
        "own CPU is the limit, so a second replica adds claimers, not throughput; on separate hosts "
        "each replica brings its own `purge.concurrency`.",
    ])
