"""Complete searches whatever the paging style; paging that never ends is an error, not a loop."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx

from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.fhir.search import ResolutionError, SearchFailed, search_each, search_pages

BASE = "http://upstream.test/fhir"


def page(ids: list[str], total: int | None = None, next_url: str | None = None) -> dict:
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": {"resourceType": "Observation", "id": i}} for i in ids]}
    if total is not None:
        bundle["total"] = total
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


async def collect(**_: object) -> list[str]:
    http = make_http_client(connect=1, read=1, max_connections=2)
    try:
        found = []
        async for matches in search_pages(FhirClient(BASE, http), asyncio.Semaphore(2), "Observation",
                                          [("subject", "Patient/p")], page_size=2):
            found += [m["id"] for m in matches]
        return found
    finally:
        await http.aclose()


@respx.mock
async def test_next_links_are_followed() -> None:
    respx.get(f"{BASE}/Observation", params={"_count": "2"}).respond(200, json=page(["a", "b"], next_url=f"{BASE}?page=2"))
    respx.get(f"{BASE}?page=2").respond(200, json=page(["c"]))
    assert await collect() == ["a", "b", "c"]


@respx.mock
async def test_an_upstream_without_links_is_paged_by_offset_using_total() -> None:
    route = respx.get(f"{BASE}/Observation")
    route.side_effect = lambda request: httpx.Response(200, json={
        "0": page(["a", "b"], total=5), "2": page(["c", "d"], total=5), "4": page(["e"], total=5),
    }[request.url.params.get("_offset", "0")])
    assert await collect() == ["a", "b", "c", "d", "e"]


@respx.mock
async def test_an_upstream_ignoring_offset_stops_instead_of_looping() -> None:
    respx.get(f"{BASE}/Observation").respond(200, json=page(["a", "b"], total=9))
    assert await collect() == ["a", "b", "a", "b"]  # the repeat adds nothing new: the search ends


@respx.mock
async def test_a_next_link_off_the_upstream_is_never_followed() -> None:
    respx.get(f"{BASE}/Observation").respond(200, json=page(["a"], next_url="http://evil.test/steal"))
    with pytest.raises(ResolutionError, match="outside its own base"):
        await collect()


@respx.mock
async def test_a_next_link_that_repeats_is_an_error() -> None:
    respx.get(f"{BASE}/Observation").respond(200, json=page(["a"], next_url=f"{BASE}?page=same"))
    respx.get(f"{BASE}?page=same").respond(200, json=page(["b"], next_url=f"{BASE}?page=same"))
    with pytest.raises(ResolutionError, match="does not end"):
        await collect()


@pytest.mark.parametrize(("links", "url"), [
    ("not a list", None), (["not an object", {"relation": "self"}], None),
    (["not an object", {"relation": "next", "url": f"{BASE}?page=2"}], f"{BASE}?page=2"),
], ids=["links-not-a-list", "no-next", "next-among-odd-links"])
def test_links_not_shaped_as_fhir_gives_them_are_read_without_failing(links, url) -> None:
    """A Bundle's ``link`` comes from the upstream: where it is not a list of objects, only the
    objects in it count (one parsing for next links and for whether more pages follow)."""
    from purgeproxy.fhir.search import has_next, next_link

    bundle = {"resourceType": "Bundle", "link": links}
    assert next_link(bundle, BASE, set()) == url
    assert has_next(bundle) == (url is not None)


@respx.mock
async def test_a_refused_search_says_why() -> None:
    respx.get(f"{BASE}/Observation").respond(400, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Unknown search parameter"}]})
    with pytest.raises(SearchFailed, match="search answered 400: Unknown search parameter"):
        await collect()


@respx.mock
async def test_first_pages_travel_in_batch_bundles_and_the_rest_one_by_one() -> None:
    def batch(request: httpx.Request) -> httpx.Response:
        entries = json.loads(request.content)["entry"]
        answers = {
            "Observation": {"response": {"status": "200 OK"}, "resource": page(["o1"], next_url=f"{BASE}?page=2")},
            "Condition": {"response": {"status": "200 OK"}, "resource": page([])},
            "Procedure": {"response": {"status": "400 Bad Request", "outcome": {
                "resourceType": "OperationOutcome", "issue": [{"diagnostics": "unknown parameter"}]}}},
        }
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": [
            answers[e["request"]["url"].split("?")[0]] for e in entries]})

    respx.post(BASE).mock(side_effect=batch)
    respx.get(f"{BASE}?page=2").respond(200, json=page(["o2"]))
    found: dict[int, list[str]] = {}
    http = make_http_client(connect=1, read=1, max_connections=2)
    searches = [(t, [("subject", "Patient/p")]) for t in ("Observation", "Condition", "Procedure")]
    problems = await search_each(FhirClient(BASE, http), asyncio.Semaphore(2), searches, 2, parts=1,
                                 on_page=lambda i, matches: found.setdefault(i, []).extend(m["id"] for m in matches))
    await http.aclose()
    assert found == {0: ["o1", "o2"], 1: []}
    assert problems == {2: "search answered 400: unknown parameter"}
    assert len(respx.calls) == 2  # one batch, one next page


@respx.mock
async def test_an_upstream_refusing_batches_gets_one_search_per_request() -> None:
    respx.post(BASE).respond(405, json={"resourceType": "OperationOutcome", "issue": []})
    respx.get(f"{BASE}/Observation").respond(200, json=page(["o1"]))
    respx.get(f"{BASE}/Condition").respond(200, json=page(["c1"]))
    found: list[str] = []
    http = make_http_client(connect=1, read=1, max_connections=2)
    searches = [(t, [("subject", "Patient/p")]) for t in ("Observation", "Condition")]
    await search_each(FhirClient(BASE, http), asyncio.Semaphore(2), searches, 2, parts=1,
                      on_page=lambda i, matches: found.extend(m["id"] for m in matches))
    await http.aclose()
    assert sorted(found) == ["c1", "o1"]


@respx.mock
async def test_a_count_refused_is_asked_again_at_the_fallback_page() -> None:
    """Microsoft's FHIR server answers 400 to a ``_count`` above its maximum where others cap it:
    a sweep's larger page is then asked again at the configured one, not reported unsearchable.
    A search refused at the fallback too says why."""
    too_many = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "_count exceeds limit"}]}
    respx.post(BASE).respond(405, json={"resourceType": "OperationOutcome", "issue": []})
    respx.get(f"{BASE}/Observation", params={"_count": "10"}).respond(400, json=too_many)
    respx.get(f"{BASE}/Observation", params={"_count": "2"}).respond(200, json=page(["o1", "o2"]))
    respx.get(f"{BASE}/Condition").respond(400, json={"resourceType": "OperationOutcome", "issue": [
        {"diagnostics": "unknown parameter"}]})
    found: dict[int, list[str]] = {}
    http = make_http_client(connect=1, read=1, max_connections=2)
    searches = [(t, [("subject", "Patient/p")]) for t in ("Observation", "Condition")]
    problems = await search_each(FhirClient(BASE, http), asyncio.Semaphore(2), searches, 10, parts=1,
                                 on_page=lambda i, matches: found.setdefault(i, []).extend(m["id"] for m in matches),
                                 fallback_page=2)
    await http.aclose()
    assert found == {0: ["o1", "o2"]}
    assert problems == {1: "search answered 400: unknown parameter"}
    counts = [call.request.url.params.get("_count") for call in respx.calls if call.request.method == "GET"]
    assert counts.count("10") == 2 and counts.count("2") == 2  # each asked at 10, then at 2
