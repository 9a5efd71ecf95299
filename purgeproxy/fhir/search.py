"""Strict, complete FHIR searches: every page, whatever way the upstream pages.

Servers page differently: HAPI gives ``next`` links, the Medplum engine gives a ``total`` and
honours ``_offset`` but no links, others give everything at once. ``search_pages`` follows
``next`` links on the upstream's own base and, when there is none but ``total`` says more
matches exist, asks for the next ``_offset``. A paging that does not end, or links pointing off the
upstream, are errors rather than loops or requests to somewhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlencode

import httpx

from purgeproxy.fhir.client import FhirClient, FhirResponse
from purgeproxy.fhir.outcome import OutcomeError

STRICT = {"Prefer": "handling=strict"}  # an unknown parameter must fail, not match everything
MAX_PAGES = 100_000
# the largest _count the proxy asks (purge.page_size's bound, and a sweep's); measured on the
# Medplum engine at 100,000 resources: sweep pages of up to 10,000 raised the peak RSS growth from
# 76 to 92 MB, for 30.5 s against 36.0 s
MAX_COUNT = 5000


class ResolutionError(OutcomeError):
    """The upstream's answers cannot be trusted to list what was asked (e.g. paging loops): 502."""

    def __init__(self, text: str) -> None:
        super().__init__(502, "exception", text)


class SearchFailed(OutcomeError):
    """The upstream refused the search; its OperationOutcome is summarised in the message."""

    def __init__(self, text: str) -> None:
        super().__init__(502, "exception", text)


def match_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The match entries of a search page (includes and outcome entries are not candidates)."""
    return [
        entry["resource"]
        for entry in bundle.get("entry") or []
        if isinstance(entry.get("resource"), dict)
        and (entry.get("search") or {}).get("mode", "match") == "match"
    ]


def outcome_text(body: Any, status: int) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                 for i in body.get("issue", [])]
        return f"search answered {status}: " + "; ".join(t for t in texts if t)
    return f"search answered {status}"


def _next(bundle: Any) -> dict[str, Any] | None:
    """A Bundle's ``next`` link, where the upstream gave one (links not shaped as FHIR's are not)."""
    links = bundle.get("link") if isinstance(bundle, dict) else None
    return next((each for each in links if isinstance(each, dict) and each.get("relation") == "next"), None) \
        if isinstance(links, list) else None


def has_next(bundle: Any) -> bool:
    """Whether a Bundle says more pages follow."""
    return _next(bundle) is not None


def next_link(bundle: dict[str, Any], base_url: str, seen: set[str]) -> str | None:
    """The next page, only on the upstream itself, and never the same page twice."""
    link = (_next(bundle) or {}).get("url")
    if not link:
        return None
    if not isinstance(link, str):
        raise ResolutionError("the upstream's next link is not a URL")
    if not link.startswith((base_url + "/", base_url + "?")):
        raise ResolutionError("the upstream's next link points outside its own base")
    if link in seen:
        raise ResolutionError("the upstream's paging does not end")
    seen.add(link)
    return link


def _key(resource: dict[str, Any]) -> tuple[Any, Any]:
    return resource.get("resourceType"), resource.get("id")


async def search_pages(client: FhirClient, limit: asyncio.Semaphore, rtype: str,
                       params: list[tuple[str, str]], page_size: int,
                       first_page: FhirResponse | None = None, max_pages: int | None = None,
                       on_more: Callable[[], None] | None = None) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the match resources of a strict search, page by page, until there are no more.

    ``first_page``: the first answer, when it was already fetched (in a batch Bundle).
    ``max_pages``: stop after that many pages; ``on_more`` is called when more were left.
    """
    first = params + [("_count", str(page_size))]
    url = rtype
    query: list[tuple[str, str]] | None = first  # None on later pages: the next link carries it
    seen_links: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for _ in range(max_pages or MAX_PAGES):
        if first_page is not None:
            answer, first_page = first_page, None
        else:
            async with limit:
                answer = await client.request("GET", url, params=query, headers=STRICT)
        if answer.status != 200 or answer.resource_type != "Bundle":
            raise SearchFailed(outcome_text(answer.body, answer.status))
        matches = match_entries(answer.body)
        fresh = {_key(m) for m in matches} - seen
        seen |= fresh
        yield matches
        link = next_link(answer.body, client.base_url, seen_links)
        if link:
            url, query = link, None
            continue
        total = answer.body.get("total")
        if not (isinstance(total, int) and total > len(seen) and fresh):
            return
        url, query = rtype, first + [("_offset", str(len(seen)))]  # pages by offset, no links
    if max_pages is None:
        raise ResolutionError("the upstream's paging does not end")
    if on_more is not None:
        on_more()


Search = tuple[str, list[tuple[str, str]]]  # (resource type, query parameters)


async def search_each(client: FhirClient, limit: asyncio.Semaphore, searches: Sequence[Search],
                      page_size: int, parts: int,
                      on_page: Callable[[int, list[dict[str, Any]]], None],
                      max_pages: int | None = None, truncated: set[int] | None = None,
                      fallback_page: int | None = None) -> dict[int, str]:
    """Run many strict searches to the end; ``on_page(index, matches)`` sees every page.

    ``max_pages``: read at most that many pages of each search; the index of every search that
    had more then goes into ``truncated``. ``fallback_page``: a search refused at ``page_size``
    runs once more at this ``_count`` (an upstream may refuse a ``_count`` above its maximum,
    as Microsoft's FHIR server does, where others cap it); pages it saw before are seen again.

    The first pages travel in ``parts`` batch Bundles sent side by side: a purge runs a hundred
    searches that mostly find nothing, and one round trip per search is what made it slow on
    upstreams that serve one request at a time. Later pages are fetched one by one. Returns the
    searches the upstream refused, by index, with its reason.
    """
    problems: dict[int, str] = {}

    async def pages(index: int, first: FhirResponse | None, count: int) -> None:
        rtype, params = searches[index]
        more = partial(truncated.add, index) if truncated is not None else None
        async for page in search_pages(client, limit, rtype, params, count, first, max_pages, more):
            on_page(index, page)

    async def one(index: int, first: FhirResponse | None) -> None:
        try:
            await pages(index, first, page_size)
        except SearchFailed:
            if fallback_page is None or fallback_page >= page_size:
                raise
            await pages(index, None, fallback_page)

    async def run(indices: list[int]) -> None:
        firsts = await _first_pages(client, limit, [searches[i] for i in indices], page_size)
        for index, first in zip(indices, firsts, strict=True):
            try:
                await one(index, first)
            except SearchFailed as failure:
                problems[index] = str(failure)

    parts = max(1, min(parts, len(searches)))
    await asyncio.gather(*(run(list(range(start, len(searches), parts))) for start in range(parts)))
    return problems


async def _first_pages(client: FhirClient, limit: asyncio.Semaphore, searches: list[Search],
                       page_size: int) -> list[FhirResponse | None]:
    """The first page of each search from one batch Bundle; None where it must be fetched alone
    (the upstream refused the batch, or answered it in a shape we do not trust)."""
    if len(searches) < 2:
        return [None] * len(searches)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"{rtype}?{urlencode(params + [('_count', str(page_size))])}"}}
        for rtype, params in searches]}
    async with limit:
        answer = await client.request("POST", "", json=bundle, headers=STRICT)
    entries = answer.body.get("entry") if answer.status == 200 and answer.resource_type == "Bundle" else None
    if not isinstance(entries, list) or len(entries) != len(searches):
        return [None] * len(searches)
    return [_entry_answer(entry) for entry in entries]


def _entry_answer(entry: Any) -> FhirResponse | None:
    """A batch entry as if it had been its own request; None when it is not understood."""
    if not isinstance(entry, dict):
        return None
    response = entry.get("response") or {}
    try:
        status = int(str(response.get("status", "")).split()[0])
    except (ValueError, IndexError):
        return None
    body = entry.get("resource") if status == 200 else (entry.get("resource") or response.get("outcome"))
    expected = "Bundle" if status == 200 else "OperationOutcome"
    if status < 400 and status != 200 or not (isinstance(body, dict) and body.get("resourceType") == expected):
        return None
    return FhirResponse(status, httpx.Headers(), body)
