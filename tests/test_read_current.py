"""The read before each delete batch, by ``_id`` search where the upstream kind asks for it
(``ServerKind.reads_by_search``): an entry of a search counts only when its search named it and
returned it once; everything else is read as before, so an upstream answering the searches
wrongly changes how many requests go, never what the reading says.

A scripted upstream (``httpx.MockTransport``); real upstreams: tests/test_purge_engine.py
(``test_a_resource_changed_after_planning_is_read_again_before_its_delete``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from purgeproxy.engine.verify import read_current
from purgeproxy.fhir.client import FhirClient

BASE = "http://upstream.test/fhir"
Key = tuple[str, str]


def resource(rtype: str, rid: str, version: str = "3") -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "meta": {"versionId": version}}


STORE = {key: resource(*key) for key in [("Observation", "a"), ("Observation", "b"), ("Condition", "c")]}
KEYS = [*STORE, ("Observation", "gone")]  # the last one deleted: a search cannot say so, a read can


class Upstream:
    """``search``: how an ``_id`` search entry is answered: "honest", "ignores-id" (every
    resource of every type), "twice" (each match two times, the second in another version),
    "refused" (400), "paged" (one match a page), "not-a-bundle"."""

    def __init__(self, search: str) -> None:
        self.search = search
        self.reads: list[str] = []
        self.searches: list[dict[str, list[str]]] = []
        self.prefer: list[str | None] = []
        self.client = FhirClient(BASE, httpx.AsyncClient(transport=httpx.MockTransport(self.handle)))

    def read(self, path: str) -> tuple[int, dict[str, Any]]:
        self.reads.append(path)
        found = STORE.get(tuple(path.split("/")))  # type: ignore[arg-type]
        return (200, found) if found else (410, {"resourceType": "OperationOutcome"})

    def searched(self, url: str) -> tuple[int, dict[str, Any]]:
        path, query = url.split("?", 1)
        params = parse_qs(query)
        self.searches.append(params)
        ids = params["_id"][0].split(",")
        hits = [body for key, body in STORE.items() if key[0] == path and key[1] in ids]
        if self.search == "refused":
            return 400, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
        if self.search == "not-a-bundle":
            return 200, {"resourceType": "Parameters"}
        if self.search == "ignores-id":
            hits = list(STORE.values())
        elif self.search == "twice":
            hits = [entry for body in hits for entry in (body, {**body, "meta": {"versionId": "1"}})]
        links = []
        if self.search == "paged" and len(hits) > 1:
            hits, links = hits[:1], [{"relation": "next", "url": f"{BASE}/{path}?page=2"}]
        entries = [{"resource": body, "search": {"mode": "match"}} for body in hits]
        return 200, {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            status, body = self.read(request.url.path.removeprefix("/fhir/"))
            return httpx.Response(status, json=body)
        self.prefer.append(request.headers.get("Prefer"))
        answers = [self.searched(url) if "?" in url else self.read(url)
                   for url in (entry["request"]["url"] for entry in json.loads(request.content)["entry"])]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": str(status)}, "resource": body} for status, body in answers]})


async def test_one_id_search_per_type_reads_what_is_there_and_only_the_rest_is_read() -> None:
    upstream = Upstream("honest")
    reading = await read_current(upstream.client, asyncio.Semaphore(2), KEYS, by_search=True)
    assert reading.current == STORE and reading.gone == [("Observation", "gone")] and not reading.unreadable
    assert upstream.searches == [{"_id": ["a,b,gone"], "_count": ["3"]}, {"_id": ["c"], "_count": ["1"]}]
    assert upstream.prefer[0] == "handling=strict"  # an ignored _id must fail, not match everything
    assert upstream.reads == ["Observation/gone"]  # only what the searches did not return


@pytest.mark.parametrize("search, read_again", [
    ("ignores-id", ["Observation/gone"]),  # a Condition in the Observation search is not taken for one
    ("twice", ["Observation/a", "Observation/b", "Condition/c", "Observation/gone"]),
    ("refused", ["Observation/a", "Observation/b", "Condition/c", "Observation/gone"]),
    ("paged", ["Observation/b", "Observation/gone"]),  # the next page is not followed: read instead
    ("not-a-bundle", ["Observation/a", "Observation/b", "Condition/c", "Observation/gone"]),
])
async def test_searches_answered_wrongly_leave_the_reading_as_reads_give_it(search: str, read_again: list[str]) -> None:
    upstream = Upstream(search)
    reading = await read_current(upstream.client, asyncio.Semaphore(2), KEYS, by_search=True)
    assert reading.current == STORE and reading.gone == [("Observation", "gone")] and not reading.unreadable
    assert upstream.reads == read_again


async def test_without_by_search_every_resource_is_read() -> None:
    upstream = Upstream("honest")
    reading = await read_current(upstream.client, asyncio.Semaphore(2), KEYS)
    assert reading.current == STORE and reading.gone == [("Observation", "gone")]
    assert upstream.searches == [] and upstream.reads == [f"{t}/{i}" for t, i in KEYS]


async def test_the_search_url_holds_only_ids_a_fhir_id_may_be() -> None:
    """An id that is not a FHIR id (from an upstream that lets one through) is read, never put
    into a search's query, where a comma or an ampersand would change what is searched."""
    odd = ("Observation", "x,y&_id=a")
    upstream = Upstream("honest")
    await read_current(upstream.client, asyncio.Semaphore(2), [*KEYS, odd], by_search=True)
    assert upstream.searches == [{"_id": ["a,b,gone"], "_count": ["3"]}, {"_id": ["c"], "_count": ["1"]}]
    assert upstream.reads == ["Observation/gone", "Observation/x,y&_id=a"]
