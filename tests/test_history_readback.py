"""History (and resource) read-back in batch Bundles: trusted only entry by entry, anything unsure read
again alone; every history read whole (``_since`` the earliest instant, every page).

A scripted upstream (``httpx.MockTransport``) serves instance histories; real upstreams are covered
by the purge tests (tests/test_purge.py reads back every hard-deleted resource on HAPI).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from purgeproxy.engine.context import Context
from purgeproxy.engine.erase import history_versions
from purgeproxy.engine.expunge import expunge_bulk
from purgeproxy.engine.verify import history_left, still_readable
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.definitions import definitions_for
from purgeproxy.fhir.history import EVER
from purgeproxy.servers.expunge import ExpungeOptions
from purgeproxy.servers.profile import UpstreamProfile
from purgeproxy.servers.registry import kind_named

BASE = "http://upstream.test/fhir"


def history(*versions: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "history",
            "entry": [{"resource": {"resourceType": "Observation", "meta": {"versionId": v}}} for v in versions]}


class Upstream:
    """Histories by path; ``batch``: how a batch Bundle is answered ("ok", "refuse", "odd",
    "reversed")."""

    def __init__(self, histories: dict[str, dict[str, Any] | None], batch: str = "ok") -> None:
        self.histories, self.batch = histories, batch
        self.requests: list[str] = []
        self.queries: set[str] = set()  # the query of every history asked, in a batch or alone
        self.client = FhirClient(BASE, httpx.AsyncClient(transport=httpx.MockTransport(self.handle)))

    def answer(self, url: str) -> tuple[int, dict[str, Any]]:
        path, _, query = url.partition("?")
        if path.endswith("/_history"):
            self.queries.add(query)
        found = self.histories.get(path)
        return (200, found) if found is not None else (410, {"resourceType": "OperationOutcome"})

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            path = request.url.path.removeprefix("/fhir/")
            self.requests.append(f"GET {path}")
            status, body = self.answer(f"{path}?{request.url.query.decode()}")
            return httpx.Response(status, json=body)
        self.requests.append("POST batch")
        if self.batch == "refuse":
            return httpx.Response(400, json={"resourceType": "OperationOutcome"})
        entries = []
        for entry in json.loads(request.content)["entry"]:
            status, body = self.answer(entry["request"]["url"])
            if self.batch == "odd" and status == 200:
                body = {"resourceType": "Bundle", "type": "searchset"}  # not a history: unsure
            entries.append({"response": {"status": f"{status}"}, "resource": body})
        if self.batch == "reversed":
            entries.reverse()  # answered out of order: one resource's 410 lands on another
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries})


KEYS = [("Observation", "a"), ("Observation", "b"), ("Observation", "c")]
HISTORIES = {"Observation/a/_history": history("1", "2"), "Observation/b/_history": None,
             "Observation/c/_history": history()}


async def test_histories_are_read_in_one_batch() -> None:
    upstream = Upstream(HISTORIES)
    assert await history_left(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert upstream.requests == ["POST batch"]
    assert upstream.queries == {f"_since={EVER}"}  # whole on HAPI, which counts one asked without


async def test_a_history_read_alone_is_asked_since_ever_too() -> None:
    upstream = Upstream(HISTORIES, batch="refuse")
    assert await history_left(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert upstream.queries == {f"_since={EVER}"}


async def test_a_refused_batch_is_read_one_by_one() -> None:
    upstream = Upstream(HISTORIES, batch="refuse")
    assert await history_left(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert sorted(upstream.requests) == ["GET Observation/a/_history", "GET Observation/b/_history",
                                         "GET Observation/c/_history", "POST batch"]


async def test_an_entry_that_is_not_a_history_is_read_again_alone() -> None:
    upstream = Upstream(HISTORIES, batch="odd")  # a and c answered 200 with a searchset: unsure
    assert await history_left(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert sorted(upstream.requests) == ["GET Observation/a/_history", "GET Observation/c/_history", "POST batch"]


CURRENT = {"Observation/a": {"resourceType": "Observation", "id": "a"}, "Observation/b": None, "Observation/c": None}


async def test_what_is_still_readable_is_read_in_one_batch_and_only_gone_is_trusted() -> None:
    """404/410 entries prove a resource gone; the one answered 200 is read again on its own."""
    upstream = Upstream(CURRENT)
    assert await still_readable(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert upstream.requests == ["POST batch", "GET Observation/a"]


async def test_a_refused_read_batch_proves_nothing_gone() -> None:
    upstream = Upstream(CURRENT, batch="refuse")
    assert await still_readable(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert sorted(upstream.requests) == ["GET Observation/a", "GET Observation/b", "GET Observation/c", "POST batch"]


async def test_a_batch_that_says_all_is_there_is_checked_one_by_one() -> None:
    """An upstream whose batch answers 200 for what is gone: each is read alone and found gone."""
    class Lying(Upstream):
        def handle(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                return super().handle(request)
            self.requests.append("POST batch")
            entries = [{"response": {"status": "200"}, "resource": {"resourceType": "Observation"}}
                       for _ in json.loads(request.content)["entry"]]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries})

    upstream = Lying(CURRENT)
    keys = [("Observation", i) for i in "abc"] * 50  # two batches, of 100 and 50
    assert await still_readable(upstream.client, asyncio.Semaphore(2), keys) == [("Observation", "a")] * 50
    assert upstream.requests.count("POST batch") == 2 and len(upstream.requests) == 152


async def test_a_read_batch_answered_out_of_order_proves_nothing_gone() -> None:
    """Reversed, the batch would put c's 410 on a, which is still there: the 200 naming a at c's
    place gives the order away, and every resource is read alone."""
    upstream = Upstream(CURRENT, batch="reversed")
    assert await still_readable(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert sorted(upstream.requests) == ["GET Observation/a", "GET Observation/b", "GET Observation/c", "POST batch"]


async def test_a_history_batch_answered_out_of_order_proves_nothing() -> None:
    """Reversed, c's empty history would land on a, whose versions remain: a's versions at c's
    place give the order away, and every history is read alone."""
    named = {"resourceType": "Bundle", "type": "history",
             "entry": [{"resource": {"resourceType": "Observation", "id": "a", "meta": {"versionId": v}}}
                       for v in ("1", "2")]}
    upstream = Upstream({**HISTORIES, "Observation/a/_history": named}, batch="reversed")
    assert await history_left(upstream.client, asyncio.Semaphore(2), KEYS) == [("Observation", "a")]
    assert sorted(upstream.requests) == ["GET Observation/a/_history", "GET Observation/b/_history",
                                         "GET Observation/c/_history", "POST batch"]


def _context(handle: Any, kind: str = "hapi") -> Context:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    profile = UpstreamProfile(kind_named(kind), definitions_for("4.0.1"), None)
    return Context(FhirClient(BASE, http), profile, asyncio.Semaphore(2), 100, 1000, "auto")


async def test_the_versions_erase_acts_on_are_read_from_every_page_of_the_history() -> None:
    """A history of more than one page (HAPI pages at its ``_count``): every version is listed,
    so a version-level ``$erase`` reaches the oldest."""
    pages = {"1": ({"3", "2"}, f"{BASE}?_getpages=h&_getpagesoffset=2"), "2": ({"1"}, None)}

    def handle(request: httpx.Request) -> httpx.Response:
        versions, following = pages["2" if "_getpages" in str(request.url) else "1"]
        links = [{"relation": "next", "url": following}] if following else []
        entries = [{"resource": {"resourceType": "Observation", "id": "a", "meta": {"versionId": v}}}
                   for v in sorted(versions, reverse=True)]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "link": links, "entry": entries})

    ctx = _context(handle)
    assert await history_versions(ctx, ("Observation", "a")) == [("3", False), ("2", False), ("1", False)]


async def test_a_bulk_expunge_read_back_says_how_far_it_checked() -> None:
    """The read-back after a type-level ``$expunge`` reads the history's newest page: with more
    pages it says it checked that far only, not that the history lists no deleted resource."""
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"resourceType": "Parameters",
                                             "parameter": [{"name": "count", "valueInteger": 3}]})
        assert request.url.params["_since"] == EVER
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history",
                                         "link": [{"relation": "next", "url": f"{BASE}?_getpages=h"}],
                                         "entry": [{"resource": {"resourceType": "Observation", "id": "a"},
                                                    "request": {"method": "PUT", "url": "Observation/a"}}]})

    removal = await expunge_bulk(_context(handle), "Observation", ExpungeOptions(deleted_resources=True, given=True),
                                 dry_run=False, allow_everything=False)
    assert not removal.errors and removal.notes == [
        "verified on the newest 1 changes of the history only: none is a deleted resource; "
        "older changes were not read back"]
