"""Many patients at once: ``Patient/$bulk-purge`` (fan-out jobs) against the same purges run one by
one through ``Patient/[id]/$purge``, on the Medplum engine and on HAPI (hard delete, ``$expunge``).

Three modes per upstream: one by one (synchronous ``$purge``, one after another, one proxy), batch
on one proxy (SQLite store), batch on two proxies sharing a PostgreSQL store (kick-off on one;
children are claimed by both). Each mode purges ``patients`` patients of ``size`` resources (the
size of a synthetic patient record), in two halves run in the order A B C C B A, so that a machine
that gets busier or quieter during the scenario moves every mode alike; each run purges a cohort
seeded for it. The Medplum engine answers a search by scanning every resource of the type, so each
of its runs gets a fresh server (the same store to scan in every mode); HAPI (indexed, slow to
start) is started once. Every run must end with every patient purged completely (checked from the
outcome). Figures: resources removed per second of wall time, and the CPU time the proxies and the
upstream spent per resource (from /proc), which says what limits a mode on a shared machine.
PASS/FAIL: the batch path at least as fast per resource as one by one, and two replicas not slower
than one (within 10 %: runs on a shared two-core machine move by that much).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.purge import hapi, medplum, patient_resources, write
from bench.report import Section
from bench.targets import Processes, cpu_seconds, free_port, wait_ready
from purgeproxy.config import Purge

TOKEN = "bench-bulk-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS_POLL_SECONDS = 0.25  # the bench polls the job this often (a client waits Retry-After, 2 s)
ONE_BY_ONE = "one by one: Patient/[id]/$purge"
BATCH_ONE = "batch: Patient/$bulk-purge, one proxy"
BATCH_TWO = "batch: two proxies, shared PostgreSQL"
ORDER = (ONE_BY_ONE, BATCH_ONE, BATCH_TWO)
DEFAULTS = Purge()  # what every proxy of the scenario runs with, unless said
# Two replicas on the one upstream run with each bound halved, as the README's "Bounds add up on the
# upstream" advises: with the defaults each (32 $expunge in flight on a two-core HAPI) HAPI's CPU per
# resource rose by a third, and two replicas purged at 0.76x one.
REPLICA_BOUNDS = (f"purge: {{concurrency: {DEFAULTS.concurrency // 2}, "
                  f"hard_delete_concurrency: {DEFAULTS.hard_delete_concurrency // 2}}}\n")


@dataclass(frozen=True)
class Settings:
    # per mode, in two halves: 20 × 650 on HAPI is 13,000 resources a mode, about 5 min a mode at
    # its measured 36-48 resources/s with hard delete (200 took hours, too long for one full run)
    patients: int = 20
    size: int = 650
    hapi: bool = True
    medplum: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(patients=3, size=100)


@dataclass
class Row:
    """One mode on one upstream, summed over its runs."""

    upstream: str
    mode: str
    patients: int = 0
    resources: int = 0
    seconds: float = 0.0
    proxy_cpu: float = 0.0  # CPU seconds of the proxy process(es) during the runs
    upstream_cpu: float = 0.0
    complete: bool = True
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each run
    note: str = ""

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    def per_resource_ms(self, cpu: float) -> float:
        return 1000 * cpu / self.resources if self.resources else 0.0


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:``port`` (the upstream, started by the tests' launchers)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


@dataclass
class Bulk:
    settings: Settings
    procs: Processes
    say: Callable[[str], None]
    postgres: str
    rows: dict[tuple[str, str], Row] = field(default_factory=dict)

    def cohort(self, base: str, patients: int) -> tuple[list[str], int]:
        """A freshly seeded cohort: its patient ids and how many resources it holds."""
        ids, total = [], 0
        for _ in range(patients):
            tag = "b" + uuid.uuid4().hex[:10]
            resources = patient_resources(tag, self.settings.size)
            write(base, resources)
            ids.append(f"{tag}-p")
            total += len(resources)
        return ids, total

    def proxy(self, upstream: str, store: str, name: str, bounds: str = "") -> tuple[str, int]:
        """A ``purgeproxy serve`` with its defaults but the job store (and ``bounds``, YAML): its
        FHIR base and pid."""
        port = free_port()
        config = self.procs.workdir / f"bulk-{name}-{port}.yaml"
        config.write_text(f"upstream: {{url: '{upstream}'}}\nserver: {{host: 127.0.0.1, port: {port}}}\n"
                          f"logging: {{level: warning}}\nauth: {{admin_token: {TOKEN}}}\n"
                          f"jobs: {{store: '{store}'}}\n{bounds}")
        child = self.procs.start(f"bulk-{name}-{port}", [sys.executable, "-m", "purgeproxy", "serve",
                                                         "--config", str(config)])
        wait_ready(child, f"http://127.0.0.1:{port}/healthz", timeout=60)
        base = f"http://127.0.0.1:{port}/fhir"
        # a dry run of a patient that does not exist: the proxy reads the upstream's profile now,
        # before the clock starts, as a proxy that has been running would have
        httpx.post(f"{base}/Patient/{uuid.uuid4().hex}/$purge?dryRun=true", headers=AUTH, timeout=120)
        return base, child.popen.pid

    def proxies(self, upstream: str, mode: str) -> list[tuple[str, int]]:
        if mode != BATCH_TWO:
            return [self.proxy(upstream, str(self.procs.workdir / f"bulk-{uuid.uuid4().hex[:8]}.sqlite3"), "single")]
        database = f"bulk{uuid.uuid4().hex[:12]}"
        _create_database(self.postgres, database)
        shared = self.postgres.rsplit("/", 1)[0] + "/" + database
        return [self.proxy(upstream, shared, name, REPLICA_BOUNDS) for name in ("a", "b")]

    def run(self, kind: str, base: str, mode: str, patients: int) -> None:
        """Seed a cohort, start the mode's proxies, purge the cohort, and add the run to its row."""
        ids, total = self.cohort(base, patients)
        started_proxies = self.proxies(base, mode)
        upstream_pid = listener_pid(urlsplit(base).port or 80)
        pids = [pid for _, pid in started_proxies] + ([upstream_pid] if upstream_pid else [])
        before = [cpu_seconds(pid) for pid in pids]
        started = time.perf_counter()
        complete, note = (self.one_by_one(started_proxies[0][0], ids) if mode == ONE_BY_ONE
                          else self.batch(started_proxies[0][0], ids))
        seconds = time.perf_counter() - started
        spent = [cpu_seconds(pid) - was for pid, was in zip(pids, before, strict=True)]
        for child in [c for c in self.procs.children if c.popen.pid in pids]:
            self.procs.stop(child)
        row = self.rows.setdefault((kind, mode), Row(kind, mode))
        row.patients += len(ids)
        row.resources += total
        row.seconds += seconds
        row.proxy_cpu += sum(spent[:len(started_proxies)])
        row.upstream_cpu += sum(spent[len(started_proxies):])
        row.complete &= complete
        row.note = row.note or note
        row.loads.append(os.getloadavg()[0])
        self.say(f"bulk: {kind}: {mode}: {total} resources in {seconds:.1f} s ({total / seconds:.0f}/s), "
                 f"load {row.loads[-1]:.1f}")

    @staticmethod
    def one_by_one(proxy: str, ids: list[str]) -> tuple[bool, str]:
        complete, note = True, ""
        with httpx.Client(timeout=3600, headers=AUTH) as http:
            for pid in ids:
                answer = http.post(f"{proxy}/Patient/{pid}/$purge?confirm=true")
                first = answer.json()["issue"][0]
                if answer.status_code != 200 or first["code"] != "success":
                    complete, note = False, note or str(first.get("diagnostics", ""))[:200]
        return complete, note

    @staticmethod
    def batch(proxy: str, ids: list[str]) -> tuple[bool, str]:
        body = {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": p} for p in ids]
                + [{"name": "confirm", "valueBoolean": True}]}
        with httpx.Client(timeout=600, headers=AUTH) as http:
            accepted = http.post(f"{proxy}/Patient/$bulk-purge", json=body, headers={"Prefer": "respond-async"})
            if accepted.status_code != 202:
                raise RuntimeError(f"bulk purge refused: {accepted.text[:500]}")
            url = f"{proxy}/$async/{accepted.headers['Content-Location'].rsplit('/', 1)[1]}"
            while (answer := http.get(url)).status_code == 202:
                time.sleep(STATUS_POLL_SECONDS)
        outcome = answer.json()["entry"][0]["response"]["outcome"] if answer.status_code == 200 else {}
        first = (outcome.get("issue") or [{}])[0]
        complete = first.get("code") == "success"
        return complete, "" if complete else str(first.get("diagnostics", answer.text))[:200]

    def upstream(self, kind: str, server: Callable[[], AbstractContextManager[str]], fresh: bool) -> None:
        """The three modes in the order A B C C B A, each half of the cohort; ``fresh``: a new
        server for every run, else one for all."""
        halves = ((self.settings.patients + 1) // 2, self.settings.patients // 2)
        runs = [(mode, halves[0]) for mode in ORDER] + [(mode, halves[1]) for mode in reversed(ORDER)]
        runs = [(mode, patients) for mode, patients in runs if patients]
        self.say(f"bulk: {kind}: {self.settings.patients} x {self.settings.size} per mode, runs "
                 + " ".join(f"{ORDER.index(mode) + 1}:{patients}" for mode, patients in runs))
        if fresh:
            for mode, patients in runs:
                with server() as base:
                    self.run(kind, base, mode, patients)
        else:
            with server() as base:
                for mode, patients in runs:
                    self.run(kind, base, mode, patients)


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
    started = time.monotonic()
    with _postgres() as postgres:
        bench = Bulk(settings, procs, say, postgres)
        if settings.medplum:
            bench.upstream("Medplum engine", medplum, fresh=True)
        if settings.hapi:
            bench.upstream("HAPI (hard delete)", hapi, fresh=False)
    return Section("Many patients: bulk purge", _body(list(bench.rows.values()), settings, time.monotonic() - started))


def verdicts(rows: list[Row]) -> list[str]:
    """Per upstream: batch (one proxy) >= one by one per resource; two proxies >= 0.9 x one."""
    lines = []
    for upstream in dict.fromkeys(row.upstream for row in rows):
        mine = {row.mode: row for row in rows if row.upstream == upstream}
        if set(mine) != set(ORDER):
            continue
        single, one, two = (mine[mode] for mode in ORDER)
        ok_batch = one.complete and single.complete and one.rate >= single.rate
        ok_two = two.complete and two.rate >= 0.9 * one.rate
        lines.append(f"- {upstream}: batch {one.rate:.0f}/s vs one by one {single.rate:.0f}/s "
                     f"({one.rate / single.rate:.2f}x): **{'PASS' if ok_batch else 'FAIL'}**; two replicas "
                     f"{two.rate:.0f}/s vs one {one.rate:.0f}/s ({two.rate / one.rate:.2f}x): "
                     f"**{'PASS' if ok_two else 'FAIL'}**")
    return lines


def _body(rows: list[Row], settings: Settings, seconds: float) -> str:
    table = ["| upstream | mode | patients | resources | seconds | resources/s | proxy CPU ms/resource | "
             "upstream CPU ms/resource | load after each run | complete |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r.upstream} | {r.mode} | {r.patients} | {r.resources:,} | {r.seconds:.1f} | {r.rate:.0f} | "
              f"{r.per_resource_ms(r.proxy_cpu):.2f} | {r.per_resource_ms(r.upstream_cpu):.2f} | "
              f"{', '.join(f'{load:.1f}' for load in r.loads)} | {'yes' if r.complete else 'no: ' + r.note} |"
              for r in rows]
    return "\n".join([
        f"`python -m bench --only bulk --bulk-patients {settings.patients}`: {settings.patients} patients of "
        f"{settings.size} resources per mode, in two halves run A B C C B A, a fresh cohort per run; defaults "
        f"of purgeproxy (batch {DEFAULTS.batch_size}, `purge.concurrency` {DEFAULTS.concurrency}, "
        f"`hard_delete_concurrency` {DEFAULTS.hard_delete_concurrency}, 4 job workers per proxy); the two "
        "replicas share one upstream, so each has those bounds halved, as the README advises "
        f"(`{REPLICA_BOUNDS.strip()}`). Scenario time {seconds:.0f} s.",
        "", *table, "", *verdicts(rows), "",
        "CPU per resource is the whole run's CPU time of the proxy process(es) and of the upstream over "
        "the resources purged. On one two-core machine shared with the upstream (and PostgreSQL), the "
        "upstream's CPU is what limits every mode: the Medplum engine runs its searches on one Node "
        "thread, and HAPI's hard delete (a transaction, then `$expunge` of every resource) is JVM and H2 "
        "work; a second replica adds claimers, not upstream capacity. On separate hosts each replica "
        "brings its own `purge.concurrency`, which the upstream must have the cores to serve.",
    ])
