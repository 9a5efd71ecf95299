"""The purge engine on its own, without aiohttp: what a CLI or a job worker would drive."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx

from purgeproxy.engine.compartment import Member
from purgeproxy.engine.deleted_history import DeletedHistoryFinder
from purgeproxy.engine.deletion import Deleter
from purgeproxy.engine.plan import Policy, delete_order
from purgeproxy.engine.purge import PurgeEngine, PurgeRequest, PurgeSettings
from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.servers.profile import ProfileCache
from tests import seed as seeds

_CHANGED = {"resourceType": "Observation", "id": "o9", "status": "final", "code": {"text": "x"}}
SETTINGS = PurgeSettings(Policy(frozenset({"AuditEvent", "Provenance"}), False),
                         batch_size=25, page_size=50, max_rounds=5, hard_delete="auto")


class Crash(Exception):
    """Stands in for a process dying in the middle of a purge."""


@pytest.fixture(params=["medplum", pytest.param("hapi", marks=pytest.mark.hapi)])
def upstream(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_base")


@pytest.fixture
async def engine(upstream: str) -> Any:
    http = make_http_client(connect=5, read=120, max_connections=8)
    client = FhirClient(upstream, http)
    profile = await ProfileCache(client, "auto", "auto").get()
    yield PurgeEngine(client, profile, SETTINGS, asyncio.Semaphore(4))
    await http.aclose()


async def test_a_purge_interrupted_half_way_completes_when_run_again(engine, upstream) -> None:
    seed = seeds.build(sizes={"Encounter": 5, "Observation": 120, "Condition": 20}, shared=False)
    seeds.write(upstream, seed.resources)
    request = PurgeRequest(seed.patient, dict(engine.profile.definitions.patient_compartment))

    async def die_after_two_batches(done: int, planned: int) -> None:
        if done >= 2 * SETTINGS.batch_size:
            raise Crash

    with pytest.raises(Crash):
        await engine.run(request, die_after_two_batches)
    left = seeds.present(upstream, seed.in_scope)
    assert 0 < len(left) < len(seed.in_scope)  # really half-way

    result = await engine.run(request)
    assert result.complete, result
    assert seeds.present(upstream, seed.in_scope) == []
    assert seeds.present(upstream, seed.untouchable) == seed.untouchable


async def test_delete_order_puts_referencing_resources_first(engine, upstream) -> None:
    seed = seeds.build(sizes={"Encounter": 2, "Observation": 4, "DiagnosticReport": 1}, shared=False)
    seeds.write(upstream, seed.resources)
    result = await engine.run(PurgeRequest(seed.patient, dict(engine.profile.definitions.patient_compartment), dry_run=True))
    order = result.planned
    position = {key: index for index, key in enumerate(order)}
    assert order[-1] == ("Patient", seed.patient)
    report = ("DiagnosticReport", f"{seed.patient}-dr0")
    assert all(position[report] < position[("Observation", f"{seed.patient}-obs{i}")] for i in range(3))
    assert all(position[("Observation", f"{seed.patient}-obs{i}")] < position[("Encounter", f"{seed.patient}-enc{i % 2}")]
               for i in range(4))


def test_delete_order_comes_in_layers_that_reference_nothing_within() -> None:
    """Everything nothing references first (sorted), then what only those referenced, and so on:
    batches of one layer may go side by side. One ready key at a time put the Encounter between
    the Observations, each batch then waiting for the one before."""
    cites = {"Condition/c": {"Patient/p"}, "DiagnosticReport/d": {"Observation/o1", "Patient/p"},
             "Observation/o1": {"Encounter/e", "Patient/p"}, "Observation/o2": {"Encounter/e", "Patient/p"},
             "Encounter/e": {"Patient/p"}, "Patient/p": set()}

    def key(text: str) -> tuple[str, str]:
        rtype, rid = text.split("/")
        return rtype, rid

    members = {key(k): Member(key(k), None, frozenset(), frozenset(), frozenset(map(key, v))) for k, v in cites.items()}
    assert ["/".join(k) for k in delete_order(members)] == [
        "Condition/c", "DiagnosticReport/d", "Observation/o2", "Observation/o1", "Encounter/e", "Patient/p"]


class Phases:
    """An engine observer recording each phase entered, in order."""

    def __init__(self) -> None:
        self.entered: list[str] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.entered.append(name)
        yield


class PhaseRequests(Phases):
    """Also counts each upstream request against the innermost phase of the task sending it."""

    current: contextvars.ContextVar[str] = contextvars.ContextVar("phase", default="other")

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, str]] = []  # (phase, method, path)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.entered.append(name)
        token = self.current.set(name)
        try:
            yield
        finally:
            self.current.reset(token)

    async def hook(self, request: httpx.Request) -> None:
        self.requests.append((self.current.get(), request.method, request.url.path))

async def _purge_observed(upstream: str, patient: str, observer: Phases, hook: Any = None,
                          confirmed: bool = False, **settings: Any) -> tuple[PurgeEngine, Any]:
    """One purge of ``patient`` with ``SETTINGS`` (``settings`` replaced) whose engine tells
    ``observer`` each phase (and ``hook``, when given, each upstream request): the engine (its
    profile) and the result."""
    http = make_http_client(connect=5, read=120, max_connections=8)
    if hook is not None:
        http.event_hooks["request"].append(hook)
    client = FhirClient(upstream, http)
    engine = PurgeEngine(client, await ProfileCache(client, "auto", "auto").get(),
                         replace(SETTINGS, observer=observer, **settings), asyncio.Semaphore(4))
    try:
        request = PurgeRequest(patient, dict(engine.profile.definitions.patient_compartment), confirmed=confirmed)
        return engine, await engine.run(request)
    finally:
        await http.aclose()



async def test_the_patient_history_is_read_once_per_resolution_not_again_for_earlier_deletes(upstream) -> None:
    """Where references are stored as written (the Medplum engine) each resolution reads the
    Patient's _history for its versioned forms; the listing of earlier deletes dates from that
    read instead of reading it again. Where the upstream normalises them (HAPI) the resolutions
    read no history and the listing reads it once. The control patient stays byte-identical."""
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(upstream, seed.resources)
    before = seeds.snapshot(upstream, seed.untouchable)
    observer = PhaseRequests()
    engine, result = await _purge_observed(upstream, seed.patient, observer, observer.hook)
    assert result.complete, result
    assert seeds.present(upstream, seed.in_scope) == []
    assert seeds.snapshot(upstream, seed.untouchable) == before
    history = f"/Patient/{seed.patient}/_history"
    reads = [phase for phase, method, path in observer.requests if method == "GET" and path.endswith(history)]
    resolutions = observer.entered.count("resolve")
    if engine.profile.normalised_references:
        assert reads.count("resolve") == 0 and reads.count("earlier") == 1, reads
    else:
        assert reads.count("resolve") == resolutions and reads.count("earlier") == 0, reads


@pytest.mark.hapi
async def test_the_earlier_deletes_listing_counts_each_change_once_while_the_server_is_written(hapi_base) -> None:
    """HAPI pages its system history from the newest change at every request (``_offset``): a
    change written between two pages pushes the others down and the next page lists them again
    (measured on HAPI 8.4: five writes between pages of ten, five listed twice; in a purge of
    10,000 resources its own deletes made 3,800 of 13,800 entries repeats). The listing covers
    the changes made before its first page, each counted once however busy the server is: the
    bounded listing's "newest N changes" is then true, and no page is read twice. The newest
    change before the listing is a DELETE, as after any purge."""
    seed = seeds.build(sizes={"Observation": 4}, shared=False)
    seeds.write(hapi_base, seed.resources)
    seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{seed.patient[:-2]}-busy{i}"} for i in range(9)])
    # the newest change a DELETE, as after any purge: HAPI lists it without a time
    assert httpx.delete(f"{hapi_base}/Patient/{seed.patient[:-2]}-busy8", headers=seeds.FHIR).status_code == 200
    created = httpx.get(f"{hapi_base}/Patient/{seed.patient}", headers=seeds.FHIR).json()["meta"]["lastUpdated"]
    quiet = httpx.get(f"{hapi_base}/_history", params={"_since": created, "_count": "1000"}, headers=seeds.FHIR).json()
    assert not [link for link in quiet["link"] if link["relation"] == "next"]
    pages: list[str] = []

    async def written_between_pages(request: httpx.Request) -> None:
        if request.url.path.endswith("/fhir/_history"):
            pages.append(str(request.url))
            if len(request.url.params.get_list("_at")) == 2:  # before each page of the window
                seeds.write(hapi_base, [{"resourceType": "Patient", "id": f"{seed.patient[:-2]}-w{len(pages)}-{i}"}
                                        for i in range(3)])

    http = make_http_client(connect=5, read=120, max_connections=8)
    http.event_hooks = {"request": [written_between_pages], "response": []}
    client = FhirClient(hapi_base, http)
    try:
        profile = await ProfileCache(client, "auto", "auto").get()
        engine = PurgeEngine(client, profile, SETTINGS, asyncio.Semaphore(4))
        finder = DeletedHistoryFinder(client, asyncio.Semaphore(4), 5, engine.resolver(
            dict(profile.definitions.patient_compartment)), SETTINGS.policy, profile.kind)
        listing = await finder.list_deletes(("Patient", seed.patient), lambda key: False)
    finally:
        await http.aclose()
    assert listing is not None
    assert listing.entries == len(quiet["entry"]), pages
    # the clock, none after it, then each page once (one past the end may be fetched ahead)
    assert len(set(pages)) == len(pages) and len(pages) - 2 - -(-len(quiet["entry"]) // 5) in (0, 1), pages


@pytest.mark.hapi
async def test_resources_older_than_the_patient_are_judged_by_the_listing_without_reads(hapi_base) -> None:
    """Two of the control's Conditions were written before the patient. One was moved to the
    patient afterwards, the other was only deleted afterwards (as after another patient's
    purge). The system history since the patient was created holds only the DELETE of the
    second: it cannot be the patient's (nothing older than the patient references it), so it is
    not read; the first has a version there that references the patient, so it is read, judged
    shared (its first version is the control's) and kept. The control stays byte-identical."""
    tag = seeds.new_tag()
    control = {"resourceType": "Patient", "id": f"{tag}-c", "name": [{"family": "Control"}]}
    older = [{"resourceType": "Condition", "id": f"{tag}-{name}", "code": {"text": name},
              "subject": seeds.ref("Patient", control["id"])} for name in ("moved", "theirs")]
    seeds.write(hapi_base, [control, *older])
    await asyncio.sleep(0.05)  # the patient's first version strictly later than theirs
    seed = seeds.build(tag, sizes={"Observation": 2, "Condition": 1}, shared=False)
    seeds.write(hapi_base, seed.resources)
    moved, theirs = ("Condition", older[0]["id"]), ("Condition", older[1]["id"])
    put = httpx.put(f"{hapi_base}/Condition/{moved[1]}", headers=seeds.FHIR,
                    json={**older[0], "subject": seeds.ref("Patient", seed.patient)})
    assert put.status_code == 200
    for rtype, rid in (moved, theirs):
        assert httpx.delete(f"{hapi_base}/{rtype}/{rid}", headers=seeds.FHIR).status_code == 200
    keep = [moved, theirs, *seed.untouchable]
    before = seeds.snapshot(hapi_base, keep)
    read: list[str] = []

    async def histories_read(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/fhir"):
            read.extend(entry["request"]["url"] for entry in json.loads(request.content).get("entry", []))
        elif request.method == "GET" and request.url.path.endswith("/_history"):
            read.append(request.url.path)

    engine, result = await _purge_observed(hapi_base, seed.patient, Phases(), histories_read)
    earlier = result.purge.earlier_deleted
    assert earlier.kept == {moved: f"shared with Patient/{control['id']}"}, earlier
    assert moved not in earlier.found and theirs not in earlier.found
    assert [url for url in read if f"Condition/{moved[1]}/_history" in url]
    assert not [url for url in read if f"Condition/{theirs[1]}" in url], read
    assert seeds.present(hapi_base, seed.in_scope) == []
    assert seeds.snapshot(hapi_base, keep) == before


@pytest.mark.hapi
async def test_an_expunge_beside_the_listing_cannot_hide_an_earlier_delete(hapi_base) -> None:
    """Another purge's ``$expunge`` removes history rows while this purge lists the system
    history (a cohort's members are purged side by side). HAPI pages that history by offset from
    its newest change: rows removed from pages already listed pull the later entries up, and the
    next page passes over as many. Here two resources of no patient, deleted last, are expunged
    once the first page (their four entries) is listed: the next page would start past the
    DELETE of the patient's Condition deleted before the purge. It is still found and its
    history removed; the control stays byte-identical."""
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    seeds.write(hapi_base, seed.resources)
    gone = {"resourceType": "Condition", "id": f"{seed.patient}-gone", "code": {"text": "gone"},
            "subject": seeds.ref("Patient", seed.patient)}
    others = [{"resourceType": "Observation", "id": f"{seed.patient}-other{i}", "status": "final",
               "code": {"text": "nobody's"}} for i in range(2)]
    for resource in (gone, *others):  # one change each, in this order: no two share a time
        assert httpx.put(f"{hapi_base}/{resource['resourceType']}/{resource['id']}", json=resource,
                         headers=seeds.FHIR).status_code == 201
        assert httpx.delete(f"{hapi_base}/{resource['resourceType']}/{resource['id']}",
                            headers=seeds.FHIR).status_code == 200
    before = seeds.snapshot(hapi_base, seed.untouchable)
    pages: list[str] = []

    async def expunged_after_the_first_page(request: httpx.Request) -> None:
        if request.url.path.endswith("/fhir/_history") and len(request.url.params.get_list("_at")) == 2:
            pages.append(str(request.url))
            if len(pages) == 2:  # another purge's hard deletes, between two pages of the listing
                for other in others:
                    expunged = httpx.post(f"{hapi_base}/Observation/{other['id']}/$expunge", headers=seeds.FHIR, json={
                        "resourceType": "Parameters", "parameter": [
                            {"name": "expungeDeletedResources", "valueBoolean": True},
                            {"name": "expungePreviousVersions", "valueBoolean": True}]})
                    assert expunged.status_code == 200, expunged.text

    _, result = await _purge_observed(hapi_base, seed.patient, Phases(), expunged_after_the_first_page, page_size=4)
    earlier = result.purge.earlier_deleted
    condition = ("Condition", gone["id"])
    assert condition in earlier.found and condition in earlier.hard_deleted, (earlier, pages)
    history = httpx.get(f"{hapi_base}/Condition/{gone['id']}/_history", headers=seeds.FHIR)
    assert history.status_code in (404, 410) or not history.json().get("entry"), history.text
    assert result.complete, result
    assert seeds.present(hapi_base, seed.in_scope) == []
    assert seeds.snapshot(hapi_base, seed.untouchable) == before


async def test_a_resource_deleted_by_another_client_during_the_purge_has_its_history_removed(
        upstream, request) -> None:
    """Another client deletes one of the patient's Observations before the compartment searches
    reach Observation (on HAPI once the listing of earlier deletes has read its window's end):
    the searches no longer find it and, on HAPI, the window (every change up to its end) does
    not hold its DELETE, so its history (the version naming the patient) would stay while a
    hard-delete purge says complete. The changes made since the window's end are listed once
    the purge's own deletes are done: its history is found and removed. The Medplum engine keeps
    no history of a deleted resource (and cannot list history since a time, which the outcome
    says). On both, no history of it is readable and the control stays byte-identical."""
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(upstream, seed.resources)
    before = seeds.snapshot(upstream, seed.untouchable)
    victim = ("Observation", f"{seed.patient}-obs0")
    window_read, deleted = asyncio.Event(), asyncio.Event()
    windowed = request.node.callspec.params["upstream"] == "hapi"  # elsewhere the listing follows the searches

    async def deleted_between_the_window_and_the_search(request: httpx.Request) -> None:
        searches = (b'"Observation?' in request.content if request.url.path.endswith("/fhir")
                    else request.method == "GET" and request.url.path.endswith("/fhir/Observation"))
        if request.url.path.endswith("/fhir/_history") and len(request.url.params.get_list("_at")) == 2:
            window_read.set()  # its end was read: the window's first page is asked for
        elif searches and not deleted.is_set():
            if windowed:
                await asyncio.wait_for(window_read.wait(), 30)
            if not deleted.is_set():
                deleted.set()
                assert httpx.delete(f"{upstream}/{victim[0]}/{victim[1]}", headers=seeds.FHIR).status_code in (200, 204)

    engine, result = await _purge_observed(upstream, seed.patient, Phases(), deleted_between_the_window_and_the_search)
    assert deleted.is_set() and victim not in result.planned, result.planned  # the trap was sprung
    earlier = result.purge.earlier_deleted
    if windowed:
        assert victim in earlier.found and victim in earlier.hard_deleted, earlier
    else:
        assert earlier.unlisted and not earlier.broken, earlier  # said: such history may remain
    history = httpx.get(f"{upstream}/{victim[0]}/{victim[1]}/_history", headers=seeds.FHIR)
    assert history.status_code in (404, 410) or not history.json().get("entry"), history.text
    assert result.complete, result
    assert seeds.present(upstream, seed.in_scope) == []
    assert seeds.snapshot(upstream, seed.untouchable) == before


_DELETED = {"request": {"method": "DELETE", "url": "Observation/o9/_history/2"}}


@contextlib.asynccontextmanager
async def _hapi_finder(history: Any, page_size: int, created: str = "2026-01-01T00:00:00.000+00:00",
                       reads: dict[str, Any] | None = None, **mock: Any) -> AsyncIterator[DeletedHistoryFinder]:
    """A HAPI kind's finder whose system ``_history`` is answered by ``history`` (respx), for
    Patient/p1 created at ``created``, its searches and listing pages of ``page_size``; ``reads``:
    what other GETs answer (path under the base -> JSON)."""
    from purgeproxy.engine.compartment import Resolver
    from purgeproxy.fhir.definitions import definitions_for
    from purgeproxy.servers.registry import kind_named
    from tests.fake_upstream import BASE

    with respx.mock(**mock) as router:
        router.get(f"{BASE}/Patient/p1/_history").respond(200, json={"resourceType": "Bundle", "type": "history",
            "entry": [{"resource": {"resourceType": "Patient", "id": "p1",
                                    "meta": {"versionId": "1", "lastUpdated": created}}}]})
        router.get(f"{BASE}/_history").mock(side_effect=history)
        for path, body in (reads or {}).items():
            router.get(f"{BASE}/{path}").respond(200, json=body)
        async with httpx.AsyncClient() as http:
            client, limit = FhirClient(BASE, http), asyncio.Semaphore(2)
            resolver = Resolver(client, definitions_for("4.0.1"), {"Observation": ("subject",)}, page_size, limit)
            yield DeletedHistoryFinder(client, limit, page_size, resolver, SETTINGS.policy, kind_named("hapi"))


@pytest.mark.parametrize(("newest", "later", "window"), [
    ({"resource": {**_CHANGED, "meta": {"lastUpdated": "2026-01-01T00:00:09.000+00:00"}}}, None,
     ["ge2026-01-01T00:00:00.000+00:00", "le2026-01-01T00:00:09.000+00:00"]),
    ({"resource": {**_CHANGED, "meta": {"lastUpdated": "2026-01-01T00:00:01.000+00:00"}}}, None,
     ["ge2026-01-01T00:00:00.000+00:00", "le2026-01-01T00:00:05.000+00:00"]),
    (_DELETED, [], ["ge2026-01-01T00:00:00.000+00:00", "le2026-01-01T00:00:05.000+00:00"]),
    (_DELETED, [{"resource": {**_CHANGED, "meta": {"lastUpdated": "2026-01-01T00:00:07.000+00:00"}}}],
     ["ge2026-01-01T00:00:00.000+00:00", "le2026-01-01T00:00:07.000+00:00"]),
    (_DELETED, [_DELETED], []),
], ids=["a-node-ahead-of-the-clock", "the-clock", "a-delete-and-nothing-after-the-clock",
        "a-delete-and-a-change-after-the-clock", "a-delete-after-the-clock"])
async def test_the_history_window_ends_at_the_newest_change_or_not_at_all(newest, later, window) -> None:
    """HAPI stamps a change with the clock of the node that wrote it, and a cluster's clocks
    differ: a window ending at the answering node's clock (5 s here) could leave out an earlier
    delete stamped by a node ahead of it. The window ends at the newest change's time when that
    is later. Where the newest change has no time (HAPI lists a DELETE without one; after any
    purge the newest change is its Patient's DELETE) the upstream is asked for a change after
    its newest change after its clock: with none, the window ends at the clock; with one, at its
    time; where that is a DELETE again, the listing takes no window and runs to the end."""
    created = "2026-01-01T00:00:00.000+00:00"
    listed: list[list[str]] = []
    asked_after: list[list[str]] = []

    def history(request: httpx.Request) -> httpx.Response:
        entries = None
        if request.url.params.get("_count") == "1" and "_since" in request.url.params:
            entries = [newest]
        elif request.url.params.get("_count") == "1":
            asked_after.append(request.url.params.get_list("_at"))
            entries = later
        else:
            listed.append(request.url.params.get_list("_at"))
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "entry": entries or [],
                                         "meta": {"lastUpdated": "2026-01-01T00:00:05.000+00:00"}})

    async with _hapi_finder(history, 5, created, assert_all_called=True) as finder:
        await finder.list_deletes(("Patient", "p1"), lambda key: False)
    assert listed == [window]
    assert asked_after == ([] if later is None else [["gt2026-01-01T00:00:05.000+00:00"]])


_NEWEST = {"resourceType": "Bundle", "type": "history", "meta": {"lastUpdated": "2026-01-01T00:00:09.000+00:00"},
           "entry": [{"resource": {**_CHANGED, "meta": {"lastUpdated": "2026-01-01T00:00:09.000+00:00"}}}]}


def _window_entry(index: int) -> dict[str, Any]:
    """Entry ``index`` of a fake window: Observation/o<i> deleted, o0 the newest change."""
    return {"fullUrl": f"Observation/o{index}", "request": {"method": "DELETE", "url": f"Observation/o{index}/_history/2"}}


@pytest.mark.parametrize(("removed", "first", "offsets"), [
    ({}, 3, [0, 3, 6, 9]),  # 12 entries in pages of 3, each page starting with the one listed last
    # two listed entries removed before page 2: the page before (offset 0) starts with listed ones
    ({2: [0, 1]}, 3, [0, 3, 0, 3, 6]),
    # the last entry listed removed itself: the page before starts with the ones listed before it
    ({2: [3]}, 3, [0, 3, 0, 3, 6, 9]),
    # more entries than a page removed before the last listed: read back two pages
    ({3: [0, 1, 2, 3, 4]}, 3, [0, 3, 6, 3, 0, 3]),
    # the same, read back one entry first, then up to a page: 5 (1 entry), 2 (3), 0 (2)
    ({3: [0, 1, 2, 3, 4]}, 1, [0, 3, 6, 5, 2, 0, 2, 5]),
    # every entry listed removed: read back to the window's start, where all are new
    ({3: [0, 1, 2, 3, 4, 5, 6]}, 3, [0, 3, 6, 3, 0, 3]),
    # entries removed before every page (a sibling's expunges all along the listing)
    ({2: [0], 3: [4, 5], 4: [1, 2, 3], 5: [6], 6: [7, 8]}, 3, [0, 3, 0, 3, 0, 3, 0]),
], ids=["still", "moved-up", "last-listed-removed", "moved-more-than-a-page", "read-back-growing",
        "all-listed-removed", "moved-before-every-page"])
async def test_a_window_listed_while_entries_are_removed_misses_none(monkeypatch, removed, first, offsets) -> None:
    """HAPI pages its history window by offset; an ``$expunge`` beside the listing removes rows
    from it (``removed``: before the n-th page request, these entries of the window), which moves
    the later ones up. Every entry still in the window is listed, each once: a page that does not
    start with entries listed makes the listing read back the entries before it (``first`` of
    them, then four times as many up to a page; ``offsets``: each request's) to the nearest read
    that does, and list what it has not there; never the window again."""
    from purgeproxy.fhir import history
    from tests.fake_upstream import BASE

    monkeypatch.setattr(history, "FIRST_READ_BACK", first)
    window = [_window_entry(index) for index in range(12)]
    requests: list[int] = []

    def history(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_count") == "1":  # the window's end: the newest change stamped
            return httpx.Response(200, json=_NEWEST)
        requests.append(int(request.url.params["_offset"]))
        for entry in [window[index] for index in removed.get(len(requests), [])]:
            entries.remove(entry)
        offset, count = int(request.url.params["_offset"]), int(request.url.params["_count"])
        more = [{"relation": "next", "url": f"{BASE}/_history?more"}] if offset + count < len(entries) else []
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "link": more,
                                         "entry": entries[offset:offset + count]})

    entries = list(window)
    async with _hapi_finder(history, 3, assert_all_called=True) as finder:
        listing = await finder.list_deletes(("Patient", "p1"), lambda key: False)
    assert listing is not None and requests == offsets
    still = {("Observation", entry["fullUrl"].split("/")[1]) for entry in entries}
    assert still <= listing.deleted and listing.entries == len(listing.deleted)
    assert listing.deleted - still <= {("Observation", f"o{index}") for gone in removed.values() for index in gone}


async def test_an_entry_listed_again_under_another_name_is_taken_alone() -> None:
    """HAPI names a resource it is expunging that moment by its database key (``Observation/901``)
    instead of its id: an entry already listed shows up again under that name among entries
    listed. Here o0 is removed before page 3 and o5, listed on page 2, is named 901 from then on:
    page 3 does not start with an entry listed, so the page before is read back, and there 901
    sits between o4 and o6, both listed. It is taken (a name not listed is never passed over);
    o6 is not listed twice."""
    from tests.fake_upstream import BASE

    window = [_window_entry(index) for index in range(12)]
    requests: list[int] = []

    def history(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_count") == "1":
            return httpx.Response(200, json=_NEWEST)
        requests.append(int(request.url.params["_offset"]))
        if len(requests) == 3:
            del window[0]
            window[4] = {"fullUrl": "Observation/901", "request": {"method": "DELETE", "url": "Observation/901/_history/2"}}
        offset, count = int(request.url.params["_offset"]), int(request.url.params["_count"])
        more = [{"relation": "next", "url": f"{BASE}/_history?more"}] if offset + count < len(window) else []
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "link": more,
                                         "entry": window[offset:offset + count]})

    async with _hapi_finder(history, 3, assert_all_called=True) as finder:
        listing = await finder.list_deletes(("Patient", "p1"), lambda key: False)
    assert listing is not None and requests == [0, 3, 6, 3, 6, 9]
    assert listing.deleted == {("Observation", f"o{index}") for index in range(12)} | {("Observation", "901")}
    assert listing.entries == 13  # each name once


@pytest.mark.parametrize(("written", "removed"), [
    ({2: [(0, 2)]}, {}),  # two changes at the head before page 2
    ({2: [(0, 4)], 3: [(0, 4)]}, {}),  # more than a page at the head, twice
    ({3: [(5, 1)]}, {}),  # one committed late, among the entries listed
    ({2: [(0, 3)]}, {3: [0, 1, 2, 3, 4]}),  # written at the head, then listed ones removed
], ids=["at-the-head", "more-than-a-page", "committed-late", "written-then-removed"])
async def test_a_window_open_at_its_end_misses_none_of_what_it_held(written, removed) -> None:
    """A window with no ``le`` (the changes made during the purge, listed after its last search)
    takes the changes written while it is listed: they push the entries after them down, so a
    page may start among the entries listed again. Every entry it held when it began is listed,
    each once, however many are written before a page (``written``: request -> (where, how many))
    or removed (``removed``: request -> entries)."""
    from purgeproxy.fhir.history import HistoryPages
    from tests.fake_upstream import BASE

    window = [_window_entry(index) for index in range(12)]
    held = list(window)
    requests: list[int] = []

    def history(request: httpx.Request) -> httpx.Response:
        assert request.url.params.get_list("_at") == ["ge2026-01-01T00:00:00.000+00:00"]
        requests.append(int(request.url.params["_offset"]))
        for where, count in written.get(len(requests), []):
            window[where:where] = [_window_entry(100 * len(requests) + where + i) for i in range(count)]
        for index in removed.get(len(requests), []):
            window.remove(_window_entry(index))
        offset, count = int(request.url.params["_offset"]), int(request.url.params["_count"])
        more = [{"relation": "next", "url": f"{BASE}/_history?more"}] if offset + count < len(window) else []
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "link": more,
                                         "entry": window[offset:offset + count]})

    with respx.mock as router:
        router.get(f"{BASE}/_history").mock(side_effect=history)
        async with httpx.AsyncClient() as http:
            pages = HistoryPages(FhirClient(BASE, http), asyncio.Semaphore(2), 3)
            listed = [entry["fullUrl"] async for entries, _ in pages.window([("_at", "ge2026-01-01T00:00:00.000+00:00")])
                      for entry in entries]
    gone = {f"Observation/o{index}" for indices in removed.values() for index in indices}
    assert {entry["fullUrl"] for entry in held} - gone <= set(listed), requests
    assert len(listed) == len(set(listed)), requests  # each once


@pytest.mark.parametrize("removed", [{}, {4: [0, 1]}, {4: [5]}, {5: list(range(12))}],
                         ids=["still", "moved-up", "last-listed-removed", "moved-more-than-a-page"])
async def test_a_window_listed_pages_ahead_misses_none(monkeypatch, removed) -> None:
    """Once ``PAGES_BEFORE_AHEAD`` pages were listed (one here), the page after the next is
    fetched while the next is awaited, at the offset the last page's length predicts: two in
    flight at most, and where nothing moves each offset asked once (one past the end may be
    asked before the last page comes). A page fetched ahead that
    does not start where the listing now stands is dropped; either way every entry still in the
    window is listed, each once."""
    from purgeproxy.fhir import history
    from tests.fake_upstream import BASE

    monkeypatch.setattr(history, "PAGES_BEFORE_AHEAD", 1)
    entries = [_window_entry(index) for index in range(30)]
    requests: list[int] = []
    in_flight = [0, 0]  # now, at most

    async def history(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_count") == "1":
            return httpx.Response(200, json=_NEWEST)
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        requests.append(int(request.url.params["_offset"]))
        for index in removed.get(len(requests), []):
            entries.remove(_window_entry(index))
        await asyncio.sleep(0.01)
        in_flight[0] -= 1
        offset, count = int(request.url.params["_offset"]), int(request.url.params["_count"])
        more = [{"relation": "next", "url": f"{BASE}/_history?more"}] if offset + count < len(entries) else []
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "link": more,
                                         "entry": entries[offset:offset + count]})

    async with _hapi_finder(history, 3) as finder:
        listing = await finder.list_deletes(("Patient", "p1"), lambda key: False)
    assert listing is not None and in_flight[1] == 2, requests
    still = {("Observation", entry["fullUrl"].split("/")[1]) for entry in entries}
    assert still <= listing.deleted and listing.entries == len(listing.deleted), requests
    if not removed:  # each page once, and at most one past the end (asked before the last page came)
        assert sorted(requests) in (list(range(0, 30, 3)), list(range(0, 33, 3))), requests


@pytest.mark.parametrize("fails", [False, True], ids=["answered", "the-second-listing-fails"])
async def test_the_changes_made_during_the_purge_are_listed_from_before_the_first_windows_end(fails) -> None:
    """HAPI stamps a change with the time its transaction began: a DELETE begun before the first
    window's end was read and committed after it is stamped inside that window, where the
    listing has passed. The changes made during the purge are listed from ``LATE_COMMIT`` before
    that end: o2, deleted at 00:00:08 and missing from the first listing, is found there and
    judged the patient's; o1, whose DELETE the first listing judged at the same version, is not
    read again (no route answers its history). Where that listing fails, the upstream had
    begun to list its history: a hard-delete purge is incomplete (``broken``)."""
    from purgeproxy.engine.compartment import Resolution
    from purgeproxy.engine.deleted_history import LATE_COMMIT

    def bundle(entries: list[Any], clock: str | None = None) -> httpx.Response:
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "entry": entries,
                                         **({"meta": {"lastUpdated": clock}} if clock else {})})

    def version(oid: str, subject: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:01.000+00:00"},
                "subject": {"reference": subject}}

    first = [_window_entry(1), {"fullUrl": "Observation/o1", "resource": version("o1", "Patient/other"),
                                "request": {"method": "PUT", "url": "Observation/o1/_history/1"}}]
    late = {"fullUrl": "Observation/o2", "request": {"method": "DELETE", "url": "Observation/o2/_history/2"}}
    windows: list[list[str]] = []

    def history(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_count") == "1":  # the first listing's end: the clock, and the newest change
            assert not windows
            clock = "2026-01-01T00:00:09.000+00:00"
            return bundle([{"resource": {**_CHANGED, "meta": {"lastUpdated": clock}}}], clock)
        windows.append(request.url.params.get_list("_at"))
        if fails and len(windows) == 2:
            return httpx.Response(500)
        return bundle(first if len(windows) == 1 else [late, *first])

    o2 = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": version("o2", "Patient/p1")}]}
    async with _hapi_finder(history, 50, reads={"Observation/o2/_history": o2}, assert_all_called=not fails) as finder:
        resolution = Resolution("p1", True)
        found = await finder.find(resolution)
        assert found.found == [] and found.listing is not None, found
        await finder.find_since(resolution, found, lambda key: False)
    assert LATE_COMMIT.total_seconds() == 10
    assert windows == [["ge2026-01-01T00:00:00.000+00:00", "le2026-01-01T00:00:09.000+00:00"],
                       ["ge2025-12-31T23:59:59.000+00:00"]], windows  # open at its end: asked after the last search
    if fails:
        assert found.broken and found.unlisted and found.found == [], found
    else:
        assert found.found == [("Observation", "o2")] and not found.unlisted and found.listed_entries == 5, found


@pytest.mark.parametrize(("failing", "broken"), [("end", False), ("page 2", True)],
                         ids=["the-first-request", "after-a-page"])
async def test_a_listing_that_breaks_off_leaves_a_hard_delete_purge_incomplete(failing, broken) -> None:
    """An upstream that cannot list its history since a time (its first answer is a refusal)
    leaves a warning: such history may remain, and nothing could have removed it. One that began
    to list it and then failed (here HAPI answers 500 for the window's second page) had that
    history there to be removed: a purge that promised a hard delete is incomplete, and says so."""
    from purgeproxy.engine.compartment import Resolution
    from purgeproxy.engine.plan import Plan
    from purgeproxy.engine.report import result_outcome
    from purgeproxy.engine.result import PurgeDetails, Result
    from tests.fake_upstream import BASE

    pages: list[str] = []

    def history(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_count") == "1":
            return httpx.Response(500) if failing == "end" else httpx.Response(200, json=_NEWEST)
        pages.append(request.url.params["_offset"])
        if len(pages) == 2:
            return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "exception", "diagnostics": "HAPI-0000: boom"}]})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history",
                                         "entry": [_window_entry(index) for index in range(4)],
                                         "link": [{"relation": "next", "url": f"{BASE}/_history?more"}]})

    async with _hapi_finder(history, 3) as finder:
        found = await finder.find(Resolution("p1", True))
    assert found.unlisted and found.broken == broken and found.found == [], found
    for method, left in (("HAPI $expunge", broken), (None, False)):
        details = PurgeDetails("p1", Plan("p1", []), earlier_deleted=found)
        result = Result("$purge", "Patient/p1", False, hard_delete_method=method, purge=details)
        issues = result_outcome(result)["issue"]
        said = [i for i in issues if "deleted before this purge could" in i.get("diagnostics", "")]
        assert result.complete != left and len(said) == 1, issues
        assert said[0]["severity"] == ("error" if left else "warning"), said
        assert said[0]["code"] == ("incomplete" if broken else "not-supported"), said


async def test_the_engine_tells_its_observer_each_phase(upstream) -> None:
    """The benchmark times phases through this hook, not by patching the engine's methods."""
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(upstream, seed.resources)
    observer = Phases()
    engine, result = await _purge_observed(upstream, seed.patient, observer)
    assert result.complete, result
    seen = observer.entered
    # outside references and the earlier-deleted history scan run beside the deletes, so their
    # place in the order varies; each is still told, and all before the verification
    main = [name for name in seen if name not in ("outside", "earlier")]
    assert main[:3] == ["resolve", "plan", "attachments"] and main[-1] == "verify"
    assert {"outside", "earlier"} <= set(seen[:seen.index("verify")])
    # where the resolution reads no patient history (HAPI) the listing starts beside it
    assert (seen.index("earlier") < seen.index("plan")) == engine.profile.normalised_references
    assert {"delete", "verify"} <= set(seen) and seen.count("resolve") >= 2  # the last round proves it empty
    assert ("expunge" in seen) == (engine.profile.kind.hard_delete_method is not None)


@pytest.mark.hapi
async def test_a_reference_from_outside_the_compartment_is_named(hapi_base: str) -> None:
    """HAPI refuses (409) to delete what an outside resource references: we report who blocks it."""
    http = make_http_client(connect=5, read=120, max_connections=8)
    client = FhirClient(hapi_base, http)
    engine = PurgeEngine(client, await ProfileCache(client, "auto", "auto").get(), SETTINGS, asyncio.Semaphore(4))
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    task = {"resourceType": "Task", "id": f"{seed.patient}-task", "status": "requested", "intent": "order",
            "for": seeds.ref("Patient", seed.control), "focus": seeds.ref("Observation", f"{seed.patient}-obs1")}
    seeds.write(hapi_base, seed.resources + [task])
    try:
        result = await engine.run(PurgeRequest(seed.patient, dict(engine.profile.definitions.patient_compartment)))
    finally:
        await http.aclose()
    blocked = ("Observation", f"{seed.patient}-obs1")
    assert not result.complete
    assert result.deletion.blocked[blocked].startswith(f"still referenced by Task/{seed.patient}-task")
    assert seeds.present(hapi_base, [blocked, ("Task", task["id"])]) == [blocked, ("Task", task["id"])]
    patient = ("Patient", seed.patient)  # the blocked Observation still references the Patient
    assert result.deletion.blocked[patient] == f"still referenced by Observation/{seed.patient}-obs1 (itself kept)"
    others = [k for k in seed.in_scope if k not in (blocked, patient)]
    assert seeds.present(hapi_base, others) == []  # everything else still went


async def test_a_document_written_during_the_purge_goes_with_its_bytes(engine, upstream) -> None:
    """A later round finds a DocumentReference written mid-purge: its Binary is the patient's too."""
    seed = seeds.build(sizes={"Observation": 60}, shared=False)
    seeds.write(upstream, seed.resources)
    before = seeds.snapshot(upstream, seed.untouchable)
    binary = {"resourceType": "Binary", "id": f"{seed.patient}-late-bin", "contentType": "text/plain", "data": "c2VjcmV0"}
    document = {"resourceType": "DocumentReference", "id": f"{seed.patient}-late-doc", "status": "current",
                "subject": seeds.ref("Patient", seed.patient),
                "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{binary['id']}"}}]}
    written: list[bool] = []

    async def write_after_the_first_batch(done: int, planned: int) -> None:
        if done >= SETTINGS.batch_size and not written:
            written.append(True)
            await asyncio.to_thread(seeds.write, upstream, [binary, document])

    request = PurgeRequest(seed.patient, dict(engine.profile.definitions.patient_compartment))
    result = await engine.run(request, write_after_the_first_batch)
    late = [("DocumentReference", document["id"]), ("Binary", binary["id"])]
    assert written and seeds.present(upstream, late) == []
    assert result.complete, result.errors
    assert seeds.present(upstream, seed.in_scope) == []
    assert seeds.snapshot(upstream, seed.untouchable) == before


async def test_what_other_clients_delete_during_the_purge_is_the_patients_history_only(engine, upstream) -> None:
    """Trap for the listing of the changes made during a hard-delete purge: while it runs,
    another client writes an Observation of the patient and deletes it (no search of the purge
    ever finds it), deletes one of the control patient's Conditions (its version 1 in the first
    listing, its DELETE in the second, where the two listings clear it unread) and writes and
    deletes an Observation of the control's. The patient's is hard-deleted, history and all; the
    control's deleted resources are left as that client's DELETE left them (their histories
    whole on HAPI), and the rest of the control byte-identical, history included. An upstream
    that cannot list its history since a time says such history may remain."""
    seed = seeds.build(sizes={"Observation": 60, "Condition": 2}, shared=False)
    seeds.write(upstream, seed.resources)
    gone = next(k for k in seed.untouchable if k[0] == "Condition")  # the control's (nothing cites it)
    before = seeds.snapshot(upstream, [k for k in seed.untouchable if k != gone])
    tag = seed.patient[:-2]
    late_mine = seeds.observation(f"{tag}-late-mine", seed.patient)
    late_theirs = seeds.observation(f"{tag}-late-theirs", seed.control)
    mine = ("Observation", late_mine["id"])
    theirs = [("Observation", late_theirs["id"]), gone]
    deleted_by_them: dict[Any, Any] = {}

    def another_client() -> None:
        seeds.write(upstream, [late_mine, late_theirs])
        for rtype, rid in [mine, *theirs]:
            assert httpx.delete(f"{upstream}/{rtype}/{rid}", headers=seeds.FHIR).status_code in (200, 204)
        deleted_by_them.update(seeds.snapshot(upstream, theirs))

    async def meanwhile(done: int, planned: int) -> None:
        if done >= SETTINGS.batch_size and not deleted_by_them:
            await asyncio.to_thread(another_client)

    result = await engine.run(PurgeRequest(seed.patient, dict(engine.profile.definitions.patient_compartment)),
                              meanwhile)
    assert deleted_by_them and seeds.present(upstream, seed.in_scope) == []
    assert seeds.snapshot(upstream, theirs) == deleted_by_them  # as their DELETE left them
    assert seeds.snapshot(upstream, [k for k in seed.untouchable if k != gone]) == before
    assert result.purge is not None
    earlier = result.purge.earlier_deleted
    assert not set(theirs) & (set(earlier.found) | set(earlier.hard_deleted))
    if engine.profile.kind.hard_delete_method is not None and earlier.unlisted is None:
        assert all(history != b"404" and history != b"410" for _, history in deleted_by_them.values())
        assert result.complete, result.errors
        assert mine in earlier.hard_deleted
        assert httpx.get(f"{upstream}/{mine[0]}/{mine[1]}/_history", headers=seeds.FHIR).status_code in (404, 410)
    else:  # said, never a silent success
        assert earlier.unlisted is not None


async def test_a_resource_changed_after_planning_is_read_again_before_its_delete(engine, upstream) -> None:
    """Trap for the read before each delete batch, the version proof on upstreams that ignore
    ``ifMatch``: after the resources were examined, another client updates one (still the
    patient's), moves one to the control patient and deletes one. The deleter deletes the
    updated one in its new version, keeps the moved one byte-identical, history included, finds
    the deleted one gone, and deletes the rest."""
    tag = seeds.new_tag()
    patient, control = f"{tag}-p", f"{tag}-q"
    condition = {"resourceType": "Condition", "id": f"{tag}-c", "subject": seeds.ref("Patient", patient)}
    seeds.write(upstream, [{"resourceType": "Patient", "id": patient}, {"resourceType": "Patient", "id": control},
                           *(seeds.observation(f"{tag}-o{i}", patient, "v1") for i in range(5)), condition,
                           seeds.observation(f"{tag}-x", control, "v1")])
    keys = [("Observation", f"{tag}-o{i}") for i in range(5)] + [("Condition", condition["id"])]
    with httpx.Client(headers=seeds.FHIR) as http:
        examined = {key: http.get(f"{upstream}/{key[0]}/{key[1]}").json()["meta"]["versionId"] for key in keys}
        updated, moved, deleted = keys[1], keys[2], keys[3]
        assert http.put(f"{upstream}/Observation/{updated[1]}",
                        json=seeds.observation(updated[1], patient, "v2")).status_code == 200
        assert http.put(f"{upstream}/Observation/{moved[1]}",
                        json=seeds.observation(moved[1], control, "v2")).status_code == 200
        assert http.delete(f"{upstream}/Observation/{deleted[1]}").status_code in (200, 204)
    kept = seeds.snapshot(upstream, [moved, ("Observation", f"{tag}-x"), ("Patient", control)])

    async def references_patient(resources: list[dict[str, Any]]) -> set[Any]:
        return {(r["resourceType"], r["id"]) for r in resources
                if r["subject"]["reference"] == f"Patient/{patient}"}

    deleter = Deleter(engine.client, engine.profile.kind, 10, asyncio.Semaphore(4), False, references_patient)
    report = await deleter.delete(keys, versions=examined)
    assert sorted(report.deleted) == sorted(k for k in keys if k not in (moved, deleted))
    assert list(report.changed) == [moved] and report.already_gone == [deleted]
    assert seeds.present(upstream, keys) == [moved]
    assert seeds.snapshot(upstream, list(kept)) == kept


async def test_sweeps_smaller_than_the_compartment_delete_it_and_nothing_else(upstream) -> None:
    """A page of 7: the purge deletes page one of each search and searches again many times
    (deep pages never read), referencing resources before what they reference (HAPI refuses
    otherwise), and ends with the full resolution: shared resources and the control patient
    stay byte-identical, history included, and every deleted resource is in what was planned.
    Later sweeps, of fewer searches, ask larger pages."""
    seed = seeds.build(sizes={"Encounter": 6, "Observation": 40, "DiagnosticReport": 9, "Condition": 10})
    seeds.write(upstream, seed.resources)
    before = seeds.snapshot(upstream, seed.untouchable)
    observer = Phases()
    counts: list[int] = []

    async def note(request: Any) -> None:
        text = request.content.decode() if request.method == "POST" else str(request.url)
        counts.extend(int(found) for found in re.findall(r"_count=(\d+)", text))

    engine, result = await _purge_observed(upstream, seed.patient, observer, note, confirmed=True, page_size=7,
                                           batch_size=10)
    patient = ("Patient", seed.patient)
    assert observer.entered.count("resolve") >= 6  # 40 Observations, 7 a page: it swept
    assert max(counts) > 7, sorted(set(counts))
    assert not result.errors and not result.deletion.failed, result.errors
    assert seeds.snapshot(upstream, seed.untouchable) == before  # byte-identical, _history too
    if engine.profile.kind.name == "hapi":  # referential integrity: the kept shared ones block the Patient
        assert not result.complete and list(result.deletion.blocked) == [patient], result.deletion.blocked
        assert seeds.present(upstream, seed.in_scope) == [patient]
        assert sorted(result.deletion.deleted) == sorted(k for k in seed.in_scope if k != patient)
    else:
        assert result.complete, result
        assert not result.deletion.blocked
        assert seeds.present(upstream, seed.in_scope) == []
        assert sorted(result.deletion.deleted) == sorted(seed.in_scope)
    assert set(result.planned) == set(seed.in_scope) and result.planned[-1] == ("Patient", seed.patient)
    assert result.purge is not None and result.purge.plan.shared  # the shared Group/Coverage: kept, reported


async def test_sweeps_search_the_types_own_parameter_and_still_prove_every_candidate(upstream) -> None:
    """Condition's compartment parameter ``patient`` is R4's shared one, filtered by
    ``resolve() is Patient`` (the Medplum engine evaluates it on every stored Condition: 3.5 s for
    700 Procedures); the sweeps search ``Condition?subject`` instead. What that search returns is
    still checked: Conditions about the Group whose id is the patient's, and one about the control
    patient that the patient only asserted (shared, found by the full resolution's
    ``Condition?asserter``), stay byte-identical with their history; the report names no
    parameter the sweeps stood in with."""
    seed = seeds.build(sizes={"Encounter": 3, "Observation": 5, "Condition": 30})
    tag = seed.patient.removesuffix("-p")
    for i in range(3):
        seed.add({"resourceType": "Condition", "id": f"{tag}-grpcond{i}", "code": {"text": "g"},
                  "subject": seeds.ref("Group", seed.patient)}, False)
    seed.add({"resourceType": "Condition", "id": f"{tag}-asserted", "code": {"text": "a"},
              "subject": seeds.ref("Patient", seed.control), "asserter": seeds.ref("Patient", seed.patient)}, False)
    seeds.write(upstream, seed.resources)
    before = seeds.snapshot(upstream, seed.untouchable)
    searched: list[str] = []

    async def note(request: Any) -> None:
        searched.append(request.content.decode() if request.method == "POST" else str(request.url))

    engine, result = await _purge_observed(upstream, seed.patient, Phases(), note, confirmed=True, page_size=7,
                                           batch_size=10)
    assert any("Condition?subject=Patient%2F" in each or "Condition?subject=Patient/" in each
               for each in searched)  # the sweeps' own parameter
    assert seeds.snapshot(upstream, seed.untouchable) == before  # byte-identical, _history too
    assert ("Condition", f"{tag}-asserted") in result.purge.plan.shared
    assert not any(param == "subject" for _, param in result.purge.plan.unsearchable)
    conditions = sorted(k for k in seed.in_scope if k[0] == "Condition")
    assert len(conditions) == 30 and seeds.present(upstream, conditions) == []
    assert set(conditions) <= set(result.deletion.deleted)


def test_later_sweeps_share_what_the_first_read_in_larger_pages() -> None:
    """As many resources as the first sweep read, shared among the searches left: never a page
    smaller than the configured one, nor larger than the largest it allows."""
    from purgeproxy.engine.purge import _sweep_page
    from purgeproxy.fhir.search import MAX_COUNT

    assert _sweep_page(7, 30, 2) == 15
    assert _sweep_page(7, 30, 10) == 7
    assert _sweep_page(1000, 100_000, 1) == MAX_COUNT
    assert _sweep_page(1000, 0, 0) == 1000


def test_the_sweep_parameter_is_the_types_own_where_the_compartments_filters_by_type() -> None:
    from purgeproxy.engine.purge import _sweep_params
    from purgeproxy.fhir.definitions import definitions_for

    definitions = definitions_for("4.0.1")
    compartment = dict(definitions.patient_compartment)
    profile = type("Profile", (), {"definitions": definitions, "searchable": None})
    chosen = _sweep_params(compartment, profile)  # type: ignore[arg-type]
    assert chosen["Procedure"] == chosen["Condition"] == chosen["CarePlan"] == "subject"
    assert chosen["Observation"] == "subject" and chosen["AllergyIntolerance"] == "patient"
    assert chosen["Provenance"] == "target"  # Provenance.target, unfiltered
    profile.searchable = {"Procedure": frozenset({"patient"})}  # the upstream does not list subject
    assert _sweep_params(compartment, profile)["Procedure"] == "patient"  # type: ignore[arg-type]


def test_a_parked_search_keeps_holding_back_what_its_last_page_referenced() -> None:
    """DiagnosticReports still open hold back Observations; the Observation search is parked (not
    run again) and still holds back the Encounters its last page referenced, and the Patient."""
    from purgeproxy.engine.compartment import Member, Resolution
    from purgeproxy.engine.purge import _held_back, _references_of

    def member(key: tuple[str, str], *refs: tuple[str, str]) -> Member:
        return Member(key, "1", frozenset({"subject"}), frozenset(), frozenset(refs))

    swept = Resolution("p", True, truncated={("DiagnosticReport", "subject"), ("Observation", "subject")})
    swept.members = {("DiagnosticReport", "d"): member(("DiagnosticReport", "d"), ("Observation", "o")),
                     ("Observation", "o"): member(("Observation", "o"), ("Encounter", "e")),
                     ("Encounter", "e"): member(("Encounter", "e"), ("Location", "l"))}
    assert _held_back(swept, {}) == {"Observation", "Encounter", "Patient"}
    parked = {("Observation", "subject"): _references_of(swept, {"Observation"})}
    later = Resolution("p", True, truncated={("DiagnosticReport", "subject")})
    later.members = {("DiagnosticReport", "d2"): member(("DiagnosticReport", "d2"), ("Observation", "o2"))}
    assert _held_back(later, parked) == {"Observation", "Encounter", "Patient"}
    assert _held_back(Resolution("p", True), {}) == set()  # every search read: nothing waits
