"""History of the patient's resources that were deleted before the purge.

A soft-deleted resource is invisible to search, so the compartment searches never find it, yet on
HAPI its earlier versions stay readable in ``_history``. They are found in the system history
since the patient's first version (``_history?_since=``; nothing that references the patient can
be older than the patient), which lists every resource changed since, deletions included (on
HAPI up to the newest change when the listing starts: see ``_window``). Each resource
with a DELETE there, unless the listing alone proves it is not the patient's (``Listing``), has
its instance ``_history`` read: it must still be deleted (no version
after that DELETE; where the listing does not say which version the DELETE made, a read
answering 404/410), and its versions are checked with ``Resolver.check``, the compartment's own
test: a version that references the patient through a compartment parameter makes it the
patient's; one that references another patient makes it shared. Policy applies as to live
resources (excluded types and, by default, shared resources are kept). What is the patient's is
hard-deleted with the upstream's own mechanism and its history read back.

An upstream that cannot list history since a time (the Medplum engine answers ``not-supported``)
cannot be searched for them: the outcome says such history may remain. The listing holds every
change on the server since the patient was created, the patient's or not (measured on HAPI: 0.3 to
0.4 ms a change on 2 cores; 45.8 s for the 50,000 changes written after a 10,000-resource patient),
so an operator may bound it (``purge.earlier_deleted_max_entries``): the newest changes are listed,
and the outcome says back to when.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from purgeproxy.engine.compartment import Resolution, Resolver
from purgeproxy.engine.deletion import hard_delete_each
from purgeproxy.engine.plan import Policy
from purgeproxy.engine.verify import HISTORY_BATCH, history_left, read_current, read_histories, read_history
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key, is_valid_id
from purgeproxy.fhir.search import MAX_PAGES, ResolutionError, next_link, outcome_text
from purgeproxy.servers.base import ServerKind

# a window listed again from its start when its pages lost their place (see ``_window_pages``)
LISTING_ATTEMPTS = 3
# once this many pages of a window were listed, the next two are in flight at once: a long listing
# is a HAPI purge's longest path, a short one only contends with the deletes. Measured on HAPI 8.4
# (bench's six patients): 10,000 purged first 28.9 -> 25.0 s (the loop 21.4-21.8 s); 650, whose
# listing is shorter than this, median 1.84 -> 1.80 s; two in flight from the first page made it
# worse there (1.68 -> 1.83 s)
PAGES_BEFORE_AHEAD = 8


@dataclass
class EarlierDeleted:
    """Resources of the patient deleted before the purge whose history the upstream still had."""

    found: list[Key] = field(default_factory=list)  # the patient's: to hard-delete
    kept: dict[Key, str] = field(default_factory=dict)  # excluded or shared: why kept
    unlisted: str | None = None  # why they could not be listed: such history may remain
    listed_back_to: str | None = None  # the listing stopped at its bound: older deletes not searched
    listed_entries: int = 0  # changes of the system history listed
    hard_deleted: list[Key] = field(default_factory=list)
    failed: dict[Key, str] = field(default_factory=dict)
    history_remaining: list[Key] = field(default_factory=list)  # read back after the hard delete


@dataclass(frozen=True)
class DeletedHistoryFinder:
    client: FhirClient
    limit: asyncio.Semaphore
    page_size: int
    resolver: Resolver
    policy: Policy
    kind: ServerKind  # how the upstream lists its history and removes a deleted resource's
    max_entries: int | None = None  # the system history's changes listed at most (newest first)

    async def find(self, resolution: Resolution, ours: Callable[[Key], bool] = lambda key: False,
                   listed: asyncio.Event | None = None,
                   started: Awaitable[Listing | None] | None = None) -> EarlierDeleted:
        """Never raises for the upstream's answers: what could not be listed is said instead.

        ``ours``: the resources this purge itself deleted (the scan may run beside its deletes:
        their DELETEs in the history are not earlier ones). ``listed`` is set once the system
        history has been listed (or could not be): a hard delete removes history rows, which
        would shift the pages of a scan still running, so it waits for that. ``started``: the
        listing already under way (``list_deletes``, started before the resolution was done)."""
        result = EarlierDeleted()
        try:
            await self._find(resolution, result, ours, listed, started)
        except ResolutionError as failure:
            result.found, result.kept, result.unlisted = [], {}, str(failure)
            result.listed_back_to = None  # not searched at all, said instead
        finally:
            if listed is not None:
                listed.set()
        return result

    async def list_deletes(self, patient: Key, ours: Callable[[Key], bool],
                   versions: list[dict[str, Any]] | None = None) -> Listing | None:
        """The system history since the patient's first version (``versions``: its history, when
        read already); None when the patient never existed or nothing of it is left to date from."""
        if versions is None:
            versions = await read_history(self.client, self.limit, f"{patient[0]}/{patient[1]}/_history")
        if not versions:
            return None
        since = _earliest(versions)
        if since is None:
            raise ResolutionError("the patient's versions carry no lastUpdated to list history from")
        return await self._deleted_since(since, ours, patient)

    async def _find(self, resolution: Resolution, result: EarlierDeleted, ours: Callable[[Key], bool],
                    listed: asyncio.Event | None, started: Awaitable[Listing | None] | None) -> None:
        patient = resolution.patient_key
        # the resolution's read of the patient's history (versioned references) dates the listing
        deletes = await (started or self.list_deletes(patient, ours, resolution.patient_history))
        if listed is not None:
            listed.set()
        if deletes is None:
            return
        result.listed_entries, result.listed_back_to = deletes.entries, deletes.stopped_at
        cleared = deletes.cleared()
        wanted = [key for key in sorted(deletes.deleted) if (key[0] in self.resolver.compartment
                  or (key == patient and resolution.patient_in_scope)) and not ours(key) and key not in cleared]
        judged = await self._judge_all(wanted, patient, deletes.deleted_at)
        for key, verdict in zip(wanted, judged, strict=True):
            if verdict is None:
                continue
            if key[0] in self.policy.excluded_types:
                result.kept[key] = f"excluded type {key[0]}"
            elif verdict and not self.policy.deletes_shared(verdict):
                result.kept[key] = "shared with " + ", ".join(f"Patient/{p}" for p in sorted(verdict))
            else:
                result.found.append(key)
        result.found.sort()

    async def remove(self, result: EarlierDeleted) -> None:
        """Hard-delete what was found, then read each history back."""
        await hard_delete_each(self.client, self.kind, self.limit, result.found, result.hard_deleted, result.failed)
        result.history_remaining = await history_left(self.client, self.limit, result.found)

    async def _deleted_since(self, since: str, ours: Callable[[Key], bool], patient: Key) -> Listing:
        """Every resource with a DELETE in the system history since ``since``, but ``ours``
        (checked as each page arrives: a DELETE the purge sent is known to it before it is sent).
        A window whose pages lost their place (``_Shifted``) is listed again from its start."""
        window = await self._window(since)
        for _ in range(LISTING_ATTEMPTS):
            listing = Listing(patient, self.resolver, ours, self.client.base_url)
            try:
                async with aclosing(self._linked_pages(since) if window is None
                                    else self._window_pages(window)) as pages:
                    async for entries, more in pages:
                        for entry in entries:
                            listing.take(entry)
                        if more and self.max_entries is not None and listing.entries >= self.max_entries:
                            listing.stopped_at = _oldest(entries)
                            break
                return listing
            except _Shifted:
                continue
        raise ResolutionError(f"_history: entries were removed from the window while it was listed, "
                              f"{LISTING_ATTEMPTS} times")

    async def _linked_pages(self, since: str) -> AsyncGenerator[tuple[list[Any], bool], None]:
        """The history since ``since`` by the upstream's own next links: (entries, more follow)."""
        url = "_history"
        params: list[tuple[str, str]] | None = [("_since", since), ("_count", str(self.page_size))]
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self._history_page(url, params)
            link = next_link(page, self.client.base_url, seen)
            yield page.get("entry") or [], link is not None
            if link is None:
                return
            url, params = link, None
        raise ResolutionError("the upstream's history paging does not end")

    async def _window_pages(self, window: list[tuple[str, str]]) -> AsyncGenerator[tuple[list[Any], bool], None]:
        """The window by ``_offset``, each page starting at the last entry listed: an ``$expunge``
        beside the listing (another purge's, a cohort's members go side by side) removes rows the
        offsets count, so the entries after them move up and a plain next page would pass over as
        many (the trap test: the DELETE of the patient's own Condition). The window's end is fixed,
        so its entries only ever move up: where the page does not start with the last entry listed,
        the page before it is read to find that entry again (``_realigned``). After
        ``PAGES_BEFORE_AHEAD`` pages the next two are fetched at once, where the last page's length
        puts them; one that does not start where the listing then stands is not taken."""
        last: tuple[Any, ...] | None = None  # the last entry listed ...
        position = 0  # ... and where it stands in the window now
        ahead: dict[int, asyncio.Future[dict[str, Any]]] = {}  # offset -> the page fetched ahead
        try:
            for number in range(MAX_PAGES):
                offset, page = position, await self._page_at(window, position, ahead)
                entries = page.get("entry") or []
                if last is None:
                    fresh = entries
                elif entries[:1] and _identity(entries[0]) == last:
                    fresh = entries[1:]
                else:  # moved up by 1 to a page's size: the page before ends with it, capped or not
                    offset = max(0, position - self.page_size)
                    page, entries, fresh = await self._realigned(window, offset, last)
                more = any(link.get("relation") == "next" for link in page.get("link") or [])
                if not (more and entries):
                    yield fresh, more
                    return
                last, position = _identity(entries[-1]), offset + len(entries) - 1
                if number + 1 >= PAGES_BEFORE_AHEAD:  # the next two, each as long as this one
                    self._fetch_ahead(window, ahead, [position, position + len(entries) - 1])
                yield fresh, more
            raise ResolutionError("the upstream's history paging does not end")
        finally:
            _drop(ahead)

    async def _page_at(self, window: list[tuple[str, str]], offset: int,
                       ahead: dict[int, asyncio.Future[dict[str, Any]]]) -> dict[str, Any]:
        """The page at ``offset``: the one fetched ahead where it starts there, else fetched now."""
        fetched = ahead.pop(offset, None)
        return await fetched if fetched is not None else await self._window_page(window, offset)

    def _fetch_ahead(self, window: list[tuple[str, str]], ahead: dict[int, asyncio.Future[dict[str, Any]]],
                     offsets: list[int]) -> None:
        """The pages at ``offsets`` in flight, and no others fetched ahead."""
        _drop({offset: ahead.pop(offset) for offset in list(ahead) if offset not in offsets})
        for offset in offsets:
            if offset not in ahead:
                ahead[offset] = asyncio.ensure_future(self._window_page(window, offset))

    async def _realigned(self, window: list[tuple[str, str]], offset: int,
                         last: tuple[Any, ...]) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """The page at ``offset`` and what follows the last entry listed on it; ``_Shifted`` when
        it is not there (it was removed itself, or more entries than a page were)."""
        page = await self._window_page(window, offset)
        entries = page.get("entry") or []
        at = next((index for index, entry in enumerate(entries) if _identity(entry) == last), None)
        if at is None:
            raise _Shifted
        return page, entries, entries[at + 1:]

    async def _window_page(self, window: list[tuple[str, str]], offset: int) -> dict[str, Any]:
        """One page of the window from ``offset``, one entry longer than the listing's pages: each
        starts with the last entry listed."""
        return await self._history_page("_history", [*window, ("_count", str(self.page_size + 1)),
                                                     ("_offset", str(offset))])

    async def _window(self, since: str) -> list[tuple[str, str]] | None:
        """The window of every change since ``since`` up to the newest change now, on an
        upstream that takes one (``ServerKind.history_window``); None: the listing runs to the
        end by next links. Such an upstream (HAPI) pages by offset from its newest change, so
        changes written while the listing runs (this purge's own deletes among them) would push
        entries already listed onto the next page: measured on HAPI 8.4, 3,800 of 13,800 entries
        listed twice beside the deletes of 10,000 resources. Where no window can be proven to
        hold every change made so far, the listing runs to the end as on any other upstream."""
        if not self.kind.history_window:
            return None
        end = await self._window_end(await self._history_page("_history", [("_since", since), ("_count", "1")]))
        return None if end is None else [("_at", f"ge{since}"), ("_at", f"le{end}")]

    async def _window_end(self, newest: dict[str, Any]) -> str | None:
        """Where a window holding every change made so far ends, from a one-entry page (``newest``):
        the upstream's clock (the Bundle's ``meta.lastUpdated``) or the newest change's time,
        whichever is later, so that a change stamped by a node whose clock runs ahead is still
        in it. HAPI lists a DELETE without its time, and after any purge the newest change is
        one (its Patient's): then the newest change after the clock (``_at=gt``) says it, and
        with none the window ends at the clock. None: no window (a DELETE newest again)."""
        entries = newest.get("entry") or []
        clock = _latest([str((newest.get("meta") or {}).get("lastUpdated"))])
        if not entries or clock is None:
            return None
        if _stamp(entries[0]) is None:
            entries = (await self._history_page("_history", [("_at", f"gt{clock}"), ("_count", "1")])).get("entry") or []
            if not entries:
                return clock
        stamp = _stamp(entries[0])
        return None if stamp is None else _latest([clock, stamp])

    async def _history_page(self, url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        """One page of the system history, or ``ResolutionError`` saying what the upstream answered."""
        async with self.limit:
            answer = await self.client.request("GET", url, params=params)
        if answer.status != 200 or answer.resource_type != "Bundle":
            raise ResolutionError(f"_history: {outcome_text(answer.body, answer.status)}")
        return cast(dict[str, Any], answer.body)

    async def _judge_all(self, keys: list[Key], patient: Key,
                         deleted_at: dict[Key, int]) -> list[frozenset[str] | None]:
        """Each key judged (see ``_judge``) from its history, read in batch Bundles: on a busy
        server the system history since the patient was created lists every resource deleted
        since, the patient's or not. A resource must still be deleted to be judged (live again,
        it is the compartment searches' business): where the listing gave the version its DELETE
        made, its history says so (no version after it); only the others are read as well.
        Measured on HAPI with another patient's 650 deletes listed, that read was one batch of
        650 GETs, half of the scan's upstream work."""
        histories = dict(zip(keys, await read_histories(self.client, self.limit, keys), strict=True))
        deleted = {key: _still_deleted(histories[key], deleted_at.get(key)) for key in keys}
        unsure = [key for key in keys if deleted[key] is None]
        for start in range(0, len(unsure), HISTORY_BATCH):
            reading = await read_current(self.client, self.limit, unsure[start:start + HISTORY_BATCH])
            deleted.update({key: key in reading.gone for key in unsure[start:start + HISTORY_BATCH]})
        return [_judge(key, patient, self.resolver, histories[key]) if deleted[key] else None for key in keys]


@dataclass
class Listing:
    """The system history since the patient's first version, as its pages arrive.

    Every DELETE in it (but the purge's own) is a candidate, to be read and judged. A candidate
    needs no reads when the listing alone proves it is not the patient's: none of its listed
    versions references the patient (every body listed is checked, in whatever order the
    upstream lists them), and its listed versions run unbroken up to the version before its
    DELETE. They must start at version 1 when the listing stopped at its bound; when it holds
    every change since the patient was created, the versions before the listed ones are older
    than the patient, and nothing older than the patient references it (the premise the
    listing's start rests on). Measured on HAPI 8.4, purging 10,000 resources after another
    patient's 10,000, all written before this patient: 31.3 / 32.0 s when each of those was read
    and judged, 20.8 / 18.5 s now. A version missing in between, or the DELETE's version
    unknown, and the candidate is read and judged. What the rule rests on besides: no entry of
    the window was missed, which its pages make sure of where an ``$expunge`` beside the listing
    moves the window's entries (``DeletedHistoryFinder._window_pages``).
    """

    patient: Key
    resolver: Resolver
    ours: Callable[[Key], bool]
    base_url: str
    deleted: set[Key] = field(default_factory=set)
    deleted_at: dict[Key, int] = field(default_factory=dict)  # the version its DELETE made
    versions: dict[Key, set[int]] = field(default_factory=dict)  # versions listed after their DELETE
    touching: set[Key] = field(default_factory=set)  # a listed version references the patient
    entries: int = 0
    stopped_at: str | None = None  # the listing stopped at its bound: the time of its oldest change

    def take(self, entry: Any) -> None:
        """One entry listed: a DELETE or a version; ``ResolutionError`` for one that is neither
        (nothing can be proven from it, and a DELETE may hide in it)."""
        request = _mapping(entry.get("request")) if isinstance(entry, dict) else {}
        body = entry.get("resource") if isinstance(entry, dict) else None
        self.entries += 1
        if request.get("method") == "DELETE":
            url = str(request.get("url", ""))
            key = _key_of(url, self.base_url)
            if key and not self.ours(key) and key not in self.deleted:
                self.deleted.add(key)
                version = _version_in(url)
                if version is not None:
                    self.deleted_at[key] = version
        elif isinstance(body, dict) and isinstance(body.get("resourceType"), str) and isinstance(body.get("id"), str):
            listed = (body["resourceType"], body["id"])
            if self.resolver.check(body, self.patient) is not None:  # 2.6 µs a body
                self.touching.add(listed)
            version = _int(_mapping(body.get("meta")).get("versionId"))
            if listed in self.deleted_at and version is not None:
                self.versions.setdefault(listed, set()).add(version)
        else:
            raise ResolutionError("_history: an entry is neither a version of a resource nor a DELETE")

    def cleared(self) -> set[Key]:
        """Candidates proven not the patient's by the listing alone (see the class)."""
        return {key for key, at in self.deleted_at.items()
                if key not in self.touching and key != self.patient and self._unbroken(key, at)}

    def _unbroken(self, key: Key, at: int) -> bool:
        """The listed versions of ``key`` run without a gap up to the one before its DELETE
        (``at``): from version 1, or, when the listing was not stopped at its bound, from any."""
        listed = self.versions.get(key, set())
        first = min(listed, default=at) if self.stopped_at is None else 1
        return listed == set(range(first, at))


def _drop(ahead: dict[int, asyncio.Future[dict[str, Any]]]) -> None:
    """Pages fetched ahead and not taken, cancelled; the failure of one already answered is
    retrieved, not raised (its page was never part of the listing)."""
    for fetched in ahead.values():
        if not fetched.cancel() and not fetched.cancelled():
            fetched.exception()
    ahead.clear()


class _Shifted(Exception):
    """The window's pages lost their place: the last entry listed cannot be found again."""


def _identity(entry: Any) -> tuple[Any, ...]:
    """What tells one history entry from another: its request (HAPI's names the version) and,
    for a version, the version's id and time."""
    if not isinstance(entry, dict):
        return (repr(entry),)
    request, meta = _mapping(entry.get("request")), _mapping(_mapping(entry.get("resource")).get("meta"))
    return (str(entry.get("fullUrl")), str(request.get("method")), str(request.get("url")),
            str(meta.get("versionId")), str(meta.get("lastUpdated")))


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` where it is a JSON object, else an empty one: an upstream's answer is not trusted
    to have the shape FHIR gives it."""
    return value if isinstance(value, dict) else {}


def _oldest(entries: list[Any]) -> str:
    """When the oldest change of a history page was made (the upstream lists newest first)."""
    return next((stamp for stamp in map(_stamp, reversed(entries)) if stamp is not None),
                "a time the upstream did not give")


def _stamp(entry: Any) -> str | None:
    """When a history entry's change was made: its version's ``lastUpdated``, or for a DELETE (no
    body) the entry's ``response.lastModified``; None where the upstream gives neither."""
    if not isinstance(entry, dict):
        return None
    body, response = entry.get("resource"), entry.get("response")
    meta = body.get("meta") if isinstance(body, dict) else None
    stamp = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if stamp is None and isinstance(response, dict):
        stamp = response.get("lastModified")
    return stamp if isinstance(stamp, str) else None


def _version_in(url: str) -> int | None:
    parts = url.split("/")
    return _int(parts[-1]) if len(parts) >= 4 and parts[-2] == "_history" else None


def _int(text: Any) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _still_deleted(versions: list[dict[str, Any]] | None, deleted_at: int | None) -> bool | None:
    """Whether a history shows its resource still deleted: gone altogether, or no version written
    after the DELETE (``deleted_at``, the version it made); None when it cannot tell (no DELETE
    version listed, or a version that is not a number): the resource is read to know."""
    if versions is None:
        return True
    numbers = [_int((body.get("meta") or {}).get("versionId")) for body in versions]
    if deleted_at is None or None in numbers:
        return None
    return all(number < deleted_at for number in numbers if number is not None)


def _judge(key: Key, patient: Key, resolver: Resolver,
           versions: list[dict[str, Any]] | None) -> frozenset[str] | None:
    """None: not the patient's; else the other patients any of its versions belongs to (one moved
    to another patient before it was deleted is shared with that one: its history holds the other
    patient's data too). ``versions``: every version of the deleted resource (None: its history
    is gone)."""
    versions = versions or []
    if key == patient:
        return frozenset() if versions else None
    mine, others = False, set[str]()
    for body in versions:
        if body.get("resourceType") != key[0] or body.get("id") != key[1]:
            continue
        mine = mine or resolver.check(body, patient) is not None
        others |= resolver.patients(body) - {patient[1]}
    return frozenset(others) if mine else None


def _earliest(versions: list[dict[str, Any]]) -> str | None:
    """The earliest ``meta.lastUpdated`` as the server wrote it (compared as instants)."""
    return _first([str((body.get("meta") or {}).get("lastUpdated")) for body in versions], min)


def _latest(stamps: list[str]) -> str | None:
    """The latest of ``stamps`` as the server wrote it (compared as instants)."""
    return _first(stamps, max)


def _first(stamps: list[str], pick: Callable[[list[tuple[datetime, str]]], tuple[datetime, str]]) -> str | None:
    """``pick`` (min or max) of ``stamps`` compared as instants; None if any is not one."""
    try:
        instants = [(datetime.fromisoformat(text), text) for text in stamps]
    except ValueError:
        return None
    return pick(instants)[1] if instants else None


def _key_of(url: str, base_url: str) -> Key | None:
    """``Observation/1/_history/2`` or ``Observation/1`` (or either on the base) -> its key."""
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    parts = url.split("/")
    if len(parts) in (2, 4) and parts[0][:1].isupper() and is_valid_id(parts[1]):
        return parts[0], parts[1]
    return None
