"""The deletion engine deletes a resource only in the version it was examined in.

A scripted upstream (an ``httpx.MockTransport``) changes resources between planning and deleting,
and can honour ``ifMatch`` as a server should, so that each path is exercised: the real upstreams
(tests/test_exact_cache.py) show that HAPI and the Medplum engine ignore ``ifMatch`` in a
transaction, which leaves the read just before each batch as what pins the version there.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from purgeproxy.engine.deletion import CHANGED, Deleter, DeletionReport
from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import kind_named

BASE = "http://upstream.test/fhir"
Key = tuple[str, str]


def obs(oid: str, version: str, subject: str = "Patient/p1") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "meta": {"versionId": version},
            "subject": {"reference": subject}}


class Upstream:
    """Resources by id; ``on_transaction`` runs before a transaction is applied (a concurrent
    writer); ``honours_if_match``: a stale ``ifMatch`` fails the whole transaction with 412."""

    def __init__(self, *resources: dict[str, Any], honours_if_match: bool = False) -> None:
        self.store = {(r["resourceType"], r["id"]): r for r in resources}
        self.history: dict[Key, list[dict[str, Any]]] = {}  # instance histories, newest first
        self.honours_if_match = honours_if_match
        self.on_transaction: Any = None
        self.transactions: list[list[dict[str, Any]]] = []
        self.client = FhirClient(BASE, httpx.AsyncClient(transport=httpx.MockTransport(self.handle)))

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers.get("Cache-Control") == "no-cache"  # every call asks for a fresh answer
        if request.method == "GET" and request.url.path.endswith("/_history"):
            rtype, rid = request.url.path.split("/")[-3:-1]
            versions = self.history.get((rtype, rid))
            return httpx.Response(404, json={"resourceType": "OperationOutcome"}) if versions is None else \
                httpx.Response(200, json={"resourceType": "Bundle", "type": "history",
                                          "entry": [{"resource": body} for body in versions]})
        if request.method == "GET":
            rtype, rid = request.url.path.split("/")[-2:]
            found = self.store.get((rtype, rid))
            return httpx.Response(200, json=found) if found else httpx.Response(410, json={"resourceType": "OperationOutcome"})
        bundle = json.loads(request.content)
        if bundle["type"] == "batch":
            return httpx.Response(400, json={"resourceType": "OperationOutcome"})  # reads go one by one
        return self.transaction([e["request"] for e in bundle["entry"]])

    def transaction(self, entries: list[dict[str, Any]]) -> httpx.Response:
        self.transactions.append(entries)
        if self.on_transaction:
            self.on_transaction()
        keys = [tuple(e["url"].split("/")) for e in entries]
        if self.honours_if_match and any(
                e.get("ifMatch") and self.store.get(k) and e["ifMatch"] != f'W/"{self.store[k]["meta"]["versionId"]}"'
                for e, k in zip(entries, keys, strict=True)):
            return httpx.Response(412, json={"resourceType": "OperationOutcome"})
        wrote = [str(int(self.store[k]["meta"]["versionId"]) + 1) if k in self.store else "" for k in keys]
        for key in keys:
            self.store.pop(key, None)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                         "entry": [{"response": {"status": "204", "etag": w}} for w in wrote]})


def recording_hard_deletes(engine: Deleter) -> list[Key]:
    """The keys ``engine`` hard-deletes from now on, recorded instead of sent."""
    expunged: list[Key] = []

    async def hard_delete(keys: list[Key], report: DeletionReport) -> None:
        expunged.extend(keys)

    engine._hard_delete = hard_delete  # type: ignore[method-assign]
    return expunged


def deleter(upstream: Upstream, hard: bool = False) -> Deleter:
    async def references_p1(resources: list[dict[str, Any]]) -> set[Key]:
        return {(r["resourceType"], r["id"]) for r in resources if r["subject"]["reference"] == "Patient/p1"}

    return Deleter(upstream.client, kind_named("generic"), 10, asyncio.Semaphore(2), hard, references_p1)


PLANNED = {("Observation", "a"): "1", ("Observation", "b"): "1", ("Observation", "c"): "1"}


async def test_deletes_carry_the_version_examined_and_changed_resources_are_checked_again() -> None:
    upstream = Upstream(obs("a", "1"), obs("b", "2", "Patient/p2"), obs("c", "2"))  # b and c changed
    report = await deleter(upstream).delete(list(PLANNED), versions=PLANNED)
    assert upstream.transactions == [[{"method": "DELETE", "url": "Observation/a", "ifMatch": 'W/"1"'},
                                      {"method": "DELETE", "url": "Observation/c", "ifMatch": 'W/"2"'}]]
    assert report.deleted == [("Observation", "a"), ("Observation", "c")]
    assert report.changed == {("Observation", "b"): CHANGED}  # now Patient/p2's: kept
    assert ("Observation", "b") in upstream.store


async def test_what_is_gone_when_read_is_not_deleted_again() -> None:
    upstream = Upstream(obs("a", "1"), obs("c", "1"))
    report = await deleter(upstream).delete(list(PLANNED), versions=PLANNED)
    assert report.already_gone == [("Observation", "b")]
    assert [e["url"] for e in upstream.transactions[0]] == ["Observation/a", "Observation/c"]


async def test_a_change_after_the_read_is_caught_where_the_upstream_honours_if_match() -> None:
    upstream = Upstream(obs("a", "1"), obs("b", "1"), obs("c", "1"), honours_if_match=True)

    def writer() -> None:  # moves b to another patient between the proxy's read and its delete
        upstream.store[("Observation", "b")] = obs("b", "2", "Patient/p2")
        upstream.on_transaction = None

    upstream.on_transaction = writer
    report = await deleter(upstream).delete(list(PLANNED), versions=PLANNED)
    assert len(upstream.transactions) == 2  # refused (412), read again, b left out
    assert [e["url"] for e in upstream.transactions[1]] == ["Observation/a", "Observation/c"]
    assert report.changed == {("Observation", "b"): CHANGED}
    assert upstream.store == {("Observation", "b"): obs("b", "2", "Patient/p2")}


async def test_a_change_after_the_read_that_the_upstream_ignored_is_reported_and_not_hard_deleted() -> None:
    """As on HAPI: ``ifMatch`` ignored, but the version its DELETE wrote shows what happened."""
    upstream = Upstream(obs("a", "1"), obs("b", "1"), obs("c", "1"))

    def writer() -> None:
        upstream.store[("Observation", "b")] = obs("b", "2", "Patient/p2")
        upstream.on_transaction = None

    upstream.on_transaction = writer
    engine = deleter(upstream, hard=True)
    hard_deleted = recording_hard_deletes(engine)
    report = await engine.delete(list(PLANNED), versions=PLANNED)
    assert list(report.unexamined) == [("Observation", "b")]
    assert "deleted in a later version the proxy never examined" in report.unexamined[("Observation", "b")]
    assert hard_deleted == [("Observation", "a"), ("Observation", "c")]  # b's history stays, to restore it


@pytest.mark.parametrize(("history", "hard_deleted"), [
    ([obs("b", "1")], True),  # deleted in the version examined
    ([obs("b", "2", "Patient/p2"), obs("b", "1")], False),  # moved to another patient, then deleted
    ([obs("b", "3"), obs("b", "2", "Patient/p2"), obs("b", "1")], True),  # moved back, still in scope
    (None, True),  # its history already gone: nothing of anyone's left to remove
])
async def test_a_resource_another_client_deleted_is_hard_deleted_only_if_deleted_in_scope(
        history: list[dict[str, Any]] | None, hard_deleted: bool) -> None:
    """b is gone when the batch reads it: someone else deleted it after it was planned. Its
    ``$expunge`` would take every version, so the version before that DELETE decides."""
    upstream = Upstream(obs("a", "1"), obs("c", "1"))
    if history is not None:
        upstream.history[("Observation", "b")] = history
    engine = deleter(upstream, hard=True)
    expunged = recording_hard_deletes(engine)
    report = await engine.delete(list(PLANNED), versions=PLANNED)
    assert report.already_gone == [("Observation", "b")]
    assert sorted(expunged) == sorted(PLANNED if hard_deleted else [("Observation", "a"), ("Observation", "c")])
    assert bool(report.unexamined) is not hard_deleted
    if not hard_deleted:
        assert "deleted by another client" in report.unexamined[("Observation", "b")]


async def test_hard_deletes_wait_for_hard_after_and_the_transactions_do_not() -> None:
    """A purge lists the system history beside its deletes; an ``$expunge`` removes history rows
    under that listing, so each batch's hard delete waits for ``hard_after`` (set once the listing
    ends), while the transactions go at once."""
    upstream = Upstream(obs("a", "1"), obs("b", "1"), obs("c", "1"))
    listed = asyncio.Event()
    engine = deleter(upstream, hard=True)
    engine.hard_after = listed
    hard_deleted = recording_hard_deletes(engine)
    running = asyncio.ensure_future(engine.delete(list(PLANNED), versions=PLANNED))
    await asyncio.sleep(0.2)
    assert len(upstream.transactions) == 1 and upstream.store == {}  # deleted before the listing ended
    assert hard_deleted == [] and not running.done()
    listed.set()
    report = await asyncio.wait_for(running, 5)
    assert hard_deleted == report.deleted == list(PLANNED)


async def test_hard_deletes_have_their_own_limit_besides_the_shared_one() -> None:
    """HAPI expunges one resource per request: a purge keeps ``purge.hard_delete_concurrency`` of
    them in flight, not bounded by (and not taking) the shared ``purge.concurrency`` slots."""
    in_flight, peak = 0, 0

    class Slow(type(kind_named("hapi"))):  # type: ignore[misc]
        async def hard_delete(self, client: FhirClient, key: tuple[str, str]) -> str | None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return None

    shared = asyncio.Semaphore(1)
    async with shared:  # the shared slot is taken (e.g. by the next batch's transaction)
        deleter = Deleter(FhirClient("http://up.test/fhir", httpx.AsyncClient()), Slow(), 100, shared, True,
                          hard_limit=asyncio.Semaphore(8))
        report = DeletionReport()
        keys = [("Observation", str(i)) for i in range(40)]
        await deleter._hard_delete(keys, report)
    assert sorted(report.hard_deleted) == sorted(keys) and peak == 8


class Overlapping:
    """An upstream whose transactions take 50 ms (150 ms with a ``slow`` entry): ``seen`` holds
    the transactions in flight each time one starts. Batch reads are refused (read one by one)."""

    def __init__(self, store: dict[Key, dict[str, Any]], slow: frozenset[str] = frozenset()) -> None:
        self.store, self.in_flight, self.seen = store, list[str](), list[tuple[str, ...]]()
        self.slow = slow
        self.client = FhirClient(BASE, httpx.AsyncClient(transport=httpx.MockTransport(self.handle)))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            rtype, rid = request.url.path.split("/")[-2:]
            found = self.store.get((rtype, rid))
            return httpx.Response(200, json=found) if found else httpx.Response(404)
        bundle = json.loads(request.content)
        if bundle["type"] == "batch":
            return httpx.Response(400, json={"resourceType": "OperationOutcome"})
        urls = [e["request"]["url"] for e in bundle["entry"]]
        self.in_flight.extend(urls)
        self.seen.append(tuple(self.in_flight))
        await asyncio.sleep(0.15 if self.slow.intersection(urls) else 0.05)
        for url in urls:
            self.in_flight.remove(url)
            rtype, rid = url.split("/")
            self.store.pop((rtype, rid), None)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                         "entry": [{"response": {"status": "204"}} for _ in urls]})


ORDER = [("Observation", "a"), ("Observation", "b"), ("Observation", "c"), ("Patient", "p1")]


@pytest.mark.parametrize("known", [True, False])
async def test_independent_batches_go_side_by_side_and_a_referenced_one_waits(known: bool) -> None:
    """Two transactions in flight (``transactions``), but the Patient's batch starts only once no
    batch in flight references it: an upstream enforcing referential integrity would refuse it.
    Without the plan's references (``refs``), one batch at a time."""
    upstream = Overlapping({("Observation", x): obs(x, "1") for x in "abc"} | {("Patient", "p1"): {
        "resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}})
    engine = Deleter(upstream.client, kind_named("generic"), 1, asyncio.Semaphore(4), False, transactions=2)
    refs = {key: frozenset({("Patient", "p1")}) for key in ORDER[:3]} if known else None
    report = await engine.delete(ORDER, versions=dict.fromkeys(ORDER, "1"), refs=refs)
    assert sorted(report.deleted) == sorted(ORDER) and not upstream.store  # in the order they finished
    if known:
        assert upstream.seen[:2] == [("Observation/a",), ("Observation/a", "Observation/b")]  # side by side
        assert upstream.seen[-1] == ("Patient/p1",)  # alone, after every batch citing it
    else:
        assert upstream.seen == [(f"{t}/{i}",) for t, i in ORDER]


async def test_a_stopped_run_tells_its_caller_what_the_batches_in_flight_removed() -> None:
    """The caller stops the run at its first progress call (a cancelled job) while a second batch
    is in flight. That batch still lands, and the caller is told so: a cancelled job's count and a
    checkpoint before SIGTERM are what it was last told (CI found 55 reported where 70 were gone)."""
    upstream = Overlapping({("Observation", x): obs(x, "1") for x in "abc"}, slow=frozenset({"Observation/b"}))
    engine = Deleter(upstream.client, kind_named("generic"), 1, asyncio.Semaphore(4), False, transactions=2)
    told: list[int] = []

    async def progress(removed: int) -> None:
        told.append(removed)
        raise RuntimeError("cancelled")

    report = DeletionReport()
    keys = ORDER[:3]
    with pytest.raises(RuntimeError):
        await engine.delete(keys, progress, versions=dict.fromkeys(keys, "1"), report=report,
                            refs=dict.fromkeys(keys, frozenset()))
    assert told == [1, 2] and sorted(report.deleted) == keys[:2]
    assert list(upstream.store) == [("Observation", "c")]  # nothing started after the stop
