"""An upstream's ``_history``: every version of one resource, and the system history's pages (by
its own next links, or a fixed window by offset).

Every history the proxy reads is asked ``_since`` the earliest instant (``EVER``): HAPI counts a
history asked without a time once and, for about a minute after, lists only as many versions
as it counted, newest first, whatever ``Cache-Control`` asks (its default
``HistoryCountModeEnum.CACHED_ONLY_WITHOUT_OFFSET``). Measured on HAPI 8.4: a resource's history
read, the resource updated, the same read again answered version 2 alone, in a batch Bundle too;
so a purge dated its listing of earlier deletes from the patient's second version and ``$erase``
of a version left an older one, both saying ``success`` (tests/test_exact_cache.py). A history
asked since a time is neither counted nor cached there; the Medplum engine ignores ``_since`` on
a resource's history, and elsewhere every version is younger than ``EVER``.

``engine.deleted_history`` decides what to list (since when, up to which change) and what the
entries mean; this module only fetches them, each once. A window (HAPI: two ``_at`` values,
paged by ``_offset`` from its newest change) keeps its place where entries leave it while it is
listed (``HistoryPages.window``); the pages of ``search.search_pages`` are searches, which HAPI
serves from a result list it keeps, so they need no such care.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any, cast

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.fhir.search import MAX_PAGES, ResolutionError, has_next, next_link, outcome_text

EVER = "0001-01-01T00:00:00Z"  # the earliest FHIR instant: ``_since`` it, a history is whole (above)

# once this many pages of a window were listed, the next two are in flight at once: a long listing
# is a HAPI purge's longest path, a short one only contends with the deletes. Measured on HAPI 8.4
# (bench's six patients): 10,000 purged first 28.9 -> 25.0 s (the loop 21.4-21.8 s); 650, whose
# listing is shorter than this, median 1.84 -> 1.80 s; two in flight from the first page made it
# worse there (1.68 -> 1.83 s)
PAGES_BEFORE_AHEAD = 8
# where a page does not start with an entry listed, the entries before it are read back this many
# first, then four times as many each time up to a page, each read ending where the last began:
# the window moved up by as many entries as were removed beside the listing, and a page of HAPI's
# history costs 0.3-0.4 ms of its CPU an entry. Measured on HAPI 8.4 with ten 650-resource
# patients purged four at a time (hard delete): of 113 pages that moved, 48 by at most 64 entries,
# 63 more by at most 320, 2 further; 25,156 entries read back, where a page each time reads 113,000
FIRST_READ_BACK = 64


def instance_history(key: Key) -> str:
    """The path of every version of ``key``, asked so that no upstream cuts it short (above)."""
    return f"{key[0]}/{key[1]}/_history?_since={EVER}"


@dataclass(frozen=True)
class HistoryPages:
    """The upstream's system history, a page at a time, within ``limit``."""

    client: FhirClient
    limit: asyncio.Semaphore
    page_size: int

    async def page(self, url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        """One page of the system history, or ``ResolutionError`` saying what the upstream answered."""
        async with self.limit:
            answer = await self.client.request("GET", url, params=params)
        if answer.status != 200 or answer.resource_type != "Bundle":
            raise ResolutionError(f"_history: {outcome_text(answer.body, answer.status)}")
        return cast(dict[str, Any], answer.body)

    async def linked(self, since: str) -> AsyncGenerator[tuple[list[Any], bool], None]:
        """The history since ``since`` by the upstream's own next links: (entries, more follow)."""
        url = "_history"
        params: list[tuple[str, str]] | None = [("_since", since), ("_count", str(self.page_size))]
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self.page(url, params)
            link = next_link(page, self.client.base_url, seen)
            yield page.get("entry") or [], link is not None
            if link is None:
                return
            url, params = link, None
        raise ResolutionError("the upstream's history paging does not end")

    async def window(self, bounds: list[tuple[str, str]]) -> AsyncGenerator[tuple[list[Any], bool], None]:
        """The window by ``_offset``, each page asked from the newest entry listed: an ``$expunge``
        beside the listing (another purge's, a cohort's members go side by side) removes rows the
        offsets count, so the entries after them move up and a plain next page would pass over as
        many (the trap test: the DELETE of the patient's own Condition). The window's end is fixed,
        so its entries only ever move up and the ones listed stay before the ones not: where a
        page does not start with an entry listed, the pages before it are read back to the nearest
        that does, and what is not listed there is listed next (``_found_again``). A window open
        at its end (no ``le``) also takes the changes written while it is listed: they go in at
        its head (or, committed late, among its entries) and push the entries after them down,
        so a page may start further back among the entries listed, never past one not listed. After
        ``PAGES_BEFORE_AHEAD`` pages the next two are fetched at once, where the last page's
        length puts them; each is taken the same way."""
        listed: set[int] = set()  # every entry listed, by its identity's hash (see ``_found_again``)
        position = 0  # where the newest entry listed stands in the window now
        ahead: dict[int, asyncio.Future[dict[str, Any]]] = {}  # offset -> the page fetched ahead
        try:
            for number in range(MAX_PAGES):
                asked = position
                offset, page, fresh = await self._found_again(bounds, asked, await self._page_at(
                    bounds, asked, ahead), listed)
                entries = page.get("entry") or []
                more = has_next(page)
                if not (more and entries):
                    yield fresh, more
                    return
                position = offset + len(entries) - 1
                if number + 1 >= PAGES_BEFORE_AHEAD and offset == asked:  # the next two, as long as this
                    self._fetch_ahead(bounds, ahead, [position, position + len(entries) - 1])
                yield fresh, more
            raise ResolutionError("the upstream's history paging does not end")
        finally:
            _drop(ahead.values())

    async def _page_at(self, bounds: list[tuple[str, str]], offset: int,
                       ahead: dict[int, asyncio.Future[dict[str, Any]]]) -> dict[str, Any]:
        """The page at ``offset``: the one fetched ahead where it starts there, else fetched now."""
        fetched = ahead.pop(offset, None)
        return await fetched if fetched is not None else await self._window_page(bounds, offset)

    def _fetch_ahead(self, bounds: list[tuple[str, str]], ahead: dict[int, asyncio.Future[dict[str, Any]]],
                     offsets: list[int]) -> None:
        """The pages at ``offsets`` in flight, and no others fetched ahead."""
        _drop([ahead.pop(offset) for offset in list(ahead) if offset not in offsets])
        for offset in offsets:
            if offset not in ahead:
                ahead[offset] = asyncio.ensure_future(self._window_page(bounds, offset))

    async def _found_again(self, bounds: list[tuple[str, str]], offset: int, page: dict[str, Any],
                           listed: set[int]) -> tuple[int, dict[str, Any], list[Any]]:
        """Where the listing stands: the page (at ``offset``, or the nearest before it that starts
        with an entry listed, read back as ``FIRST_READ_BACK`` says) and its entries not listed
        yet, now added to ``listed``; at the window's start, whatever it starts with (every entry
        listed before it has left the window). Nothing moved: the page starts with the newest
        entry listed, and no request is added.

        Every entry not listed is taken, wherever it stands on the page: HAPI names a resource
        it is expunging that moment by its database key instead of its id (seen in 3 of 100
        listings of a window beside such expunges: ``Observation/79201``), so an entry listed
        under one name can show up again under the other among entries listed. Taking only what
        followed the first such entry listed up to 7,194 entries twice a listing, in ten
        650-resource purges side by side.

        Entries are known by their identity's hash: 4.2 MB for 60,000 entries listed (a
        10,000-resource HAPI purge's window), against 24.9 MB for the identities themselves
        (tracemalloc). An entry not listed taken for one listed by chance (64-bit hashes): about
        once in 3 x 10^11 pages of 1,000 at 60,000 listed."""
        back = min(self.page_size, FIRST_READ_BACK)
        while True:
            entries = page.get("entry") or []
            digests = [hash(identity(entry)) for entry in entries]
            if (digests and digests[0] in listed) or offset == 0:
                fresh = [entry for entry, digest in zip(entries, digests, strict=True) if digest not in listed]
                listed.update(digests)
                return offset, page, fresh
            start = max(0, offset - back)
            page = await self._window_page(bounds, start, offset - start + 1)  # ends where the last began
            offset, back = start, min(self.page_size, back * 4)

    async def _window_page(self, bounds: list[tuple[str, str]], offset: int, count: int | None = None) -> dict[str, Any]:
        """``count`` entries of the window from ``offset``; by default one more than the listing's
        pages: each starts with the last entry listed."""
        return await self.page("_history", [*bounds, ("_count", str(count or self.page_size + 1)),
                                                     ("_offset", str(offset))])


def _drop(pages: Iterable[asyncio.Future[dict[str, Any]]]) -> None:
    """Pages fetched ahead and not taken, cancelled; the failure of one already answered is
    retrieved, not raised (its page was never part of the listing)."""
    for fetched in pages:
        if not fetched.cancel() and not fetched.cancelled():
            fetched.exception()


def identity(entry: Any) -> tuple[Any, ...]:
    """What tells one history entry from another: its request (HAPI's names the version) and,
    for a version, the version's id and time."""
    if not isinstance(entry, dict):
        return (repr(entry),)
    request, meta = json_object(entry.get("request")), json_object(json_object(entry.get("resource")).get("meta"))
    return (str(entry.get("fullUrl")), str(request.get("method")), str(request.get("url")),
            str(meta.get("versionId")), str(meta.get("lastUpdated")))


def json_object(value: Any) -> dict[str, Any]:
    """``value`` where it is a JSON object, else an empty one: an upstream's answer is not trusted
    to have the shape FHIR gives it."""
    return value if isinstance(value, dict) else {}
