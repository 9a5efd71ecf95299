"""History of the patient's resources that were deleted before the purge.

A soft-deleted resource is invisible to search, so the compartment searches never find it, yet on
HAPI its earlier versions stay readable in ``_history``. They are found in the system history
since the patient's first version (``_history?_since=``; nothing that references the patient can
be older than the patient), which lists every resource changed since, deletions included (on
HAPI up to the newest change when the listing starts: see ``_window_end``; the changes made
after it are listed once the purge's own deletes are done: ``find_since``). Each resource
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
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from purgeproxy.engine.compartment import Resolution, Resolver
from purgeproxy.engine.deletion import hard_delete_each
from purgeproxy.engine.plan import Policy
from purgeproxy.engine.verify import HISTORY_BATCH, history_left, read_current, read_histories, read_history
from purgeproxy.fhir.client import FhirClient, UpstreamError
from purgeproxy.fhir.history import HistoryPages, json_object
from purgeproxy.fhir.references import Key, is_valid_id
from purgeproxy.fhir.search import ResolutionError
from purgeproxy.servers.base import ServerKind

# the changes made since the listing's end are listed from this long before it: HAPI stamps a
# change with the time its transaction began, so a DELETE begun before that end was read and
# committed after is stamped inside the window, where the listing may have passed already.
# Measured on HAPI 8.4 (2 cores): a transaction of 100 / 1,000 / 2,000 DELETEs takes 0.29 /
# 1.05-1.25 / 2.11 s, so this covers one of about 10,000; the slice before the end costs one
# listing of what was written in it (a DELETE the first listing judged is not read again)
LATE_COMMIT = timedelta(seconds=10)
# a listing keeps the versions of at most this many resources it did not see deleted (160 bytes
# each: 32 MB), each as bits of one int up to this version (a resource written more often is read
# and judged: ``UNPROVABLE``)
MAX_KEPT = 200_000
MAX_VERSION = 4096
UNPROVABLE = -1


@dataclass
class EarlierDeleted:
    """Resources of the patient deleted before the purge whose history the upstream still had."""

    found: list[Key] = field(default_factory=list)  # the patient's: to hard-delete
    kept: dict[Key, str] = field(default_factory=dict)  # excluded or shared: why kept
    unlisted: str | None = None  # why they could not be listed: such history may remain
    broken: bool = False  # ... after the upstream had begun to list them (not for want of a way)
    listed_back_to: str | None = None  # the listing stopped at its bound: older deletes not searched
    listed_entries: int = 0  # changes of the system history listed
    listing: Listing | None = field(default=None, repr=False)  # the first listing, from the patient's creation
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
            result.broken = isinstance(failure, ListingBroken)
            result.listed_back_to = None  # not searched at all, said instead
        finally:
            if listed is not None:
                listed.set()
        return result

    async def find_since(self, resolution: Resolution, result: EarlierDeleted, ours: Callable[[Key], bool]) -> None:
        """The changes made since the first listing ended, added to ``result``: a resource of the
        patient that another client deleted after that end was read is no longer found by the
        searches that followed, and its DELETE is not in the first listing. Called once the
        purge's own searches and hard deletes are done (any resource deleted later was found by
        them live, and the rows of its own are gone: the listing holds little more than what
        others changed meanwhile); listed from ``LATE_COMMIT`` before that end (not before the
        first listing's bound), each DELETE the first listing judged at the same version
        skipped. Never raises for the upstream's answers or its failing: a listing that fails
        leaves a hard-delete purge incomplete (``broken``)."""
        first = result.listing
        if first is None or result.unlisted is not None:
            return
        try:
            late = await self._deleted_since(first.continued_from(), ours, resolution.patient_key, from_patient=False)
            result.listed_entries += late.entries
            judged = {key for key, at in late.deleted_at.items() if first.deleted_at.get(key) == at}
            await self._take(late, resolution, result, ours, skip=judged | set(result.found) | set(result.kept),
                             before=first)
        except (ResolutionError, UpstreamError) as failure:  # what was found before stays found, and is removed
            result.unlisted, result.broken = failure.text, True

    async def list_deletes(self, patient: Key, ours: Callable[[Key], bool],
                   versions: list[dict[str, Any]] | None = None) -> Listing | None:
        """The system history since the patient's first version (``versions``: its history, when
        read already); None when the patient never existed or nothing of it is left to date from."""
        if versions is None:
            versions = await read_history(self.client, self.limit, patient)
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
        result.listing, result.listed_entries, result.listed_back_to = deletes, deletes.entries, deletes.stopped_at
        await self._take(deletes, resolution, result, ours)

    async def _take(self, deletes: Listing, resolution: Resolution, result: EarlierDeleted, ours: Callable[[Key], bool],
                    skip: set[Key] | None = None, before: Listing | None = None) -> None:
        """The listing's candidates judged into ``result`` (found or kept), but those in ``skip``
        (judged already); ``before``: the listing this one continues (``Listing.cleared``)."""
        patient, cleared = resolution.patient_key, deletes.cleared(before) | (skip or set())
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

    async def _deleted_since(self, since: str, ours: Callable[[Key], bool], patient: Key,
                             from_patient: bool = True) -> Listing:
        """Every resource with a DELETE in the system history since ``since``, but ``ours``
        (checked as each page arrives: a DELETE the purge sent is known to it before it is sent).
        ``from_patient``: ``since`` is the patient's creation (see ``Listing``), and the listing
        is bounded by ``max_entries``; else it lists the changes made during the purge, unbounded."""
        end = await self._window_end(since) if from_patient else None
        listing = Listing(patient, self.resolver, ours, self.client.base_url, since, end, from_patient)
        bound = self.max_entries if from_patient else None
        answered = end is not None  # the window's end was read from it
        try:
            async with aclosing(self._history_since(since, end, from_patient)) as pages:
                async for entries, more in pages:
                    answered = True
                    if from_patient and end is None and listing.entries == 0:  # by next links: up to its newest change
                        listing.until = _latest([stamp for stamp in map(_stamp, entries) if stamp is not None])
                    for entry in entries:
                        listing.take(entry)
                    if more and bound is not None and listing.entries >= bound:
                        listing.stopped_at = _oldest(entries)
                        break
        except ResolutionError as failure:
            if answered:
                raise ListingBroken(failure.text) from failure
            raise
        return listing

    def _pages(self) -> HistoryPages:
        return HistoryPages(self.client, self.limit, self.page_size)

    def _history_since(self, since: str, end: str | None,
                       from_patient: bool) -> AsyncGenerator[tuple[list[Any], bool], None]:
        """The pages of the changes since ``since``: a window up to ``end``; for the changes made
        during the purge (not ``from_patient``), on an upstream that takes windows (HAPI), one
        open at its end. That listing is asked once the purge's last search is done, so a change
        written while it runs needs no listing (a DELETE of the patient's resource then was of
        one those searches found live); it goes in before entries not listed yet, as a window's
        pages allow (``HistoryPages.window``). Reading the end first costs one or two requests
        more: measured on HAPI 8.4 (bench, a 10-resource purge with a hard delete, three runs),
        0.33 / 0.33 / 0.31 s without this listing (4 requests in its phase), 0.41 / 0.37 /
        0.33 s with it and the end read (7), 0.39 / 0.37 / 0.33 s open (5). Elsewhere the
        upstream's own next links."""
        history = self._pages()
        if end is not None:
            return history.window([("_at", f"ge{since}"), ("_at", f"le{end}")])
        if self.kind.history_window and not from_patient:
            return history.window([("_at", f"ge{since}")])
        return history.linked(since)

    async def _window_end(self, since: str) -> str | None:
        """The end of a window of every change since ``since`` up to the newest change now, on an
        upstream that takes one (``ServerKind.history_window``); None: the listing runs to the
        end by next links. Such an upstream (HAPI) pages by offset from its newest change, so
        changes written while the listing runs (this purge's own deletes among them) would push
        entries already listed onto the next page: measured on HAPI 8.4, 3,800 of 13,800 entries
        listed twice beside the deletes of 10,000 resources. Where no window can be proven to
        hold every change made so far, the listing runs to the end as on any other upstream."""
        if not self.kind.history_window:
            return None
        return await self._end_after(await self._pages().page("_history", [("_since", since), ("_count", "1")]))

    async def _end_after(self, newest: dict[str, Any]) -> str | None:
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
            entries = (await self._pages().page("_history", [("_at", f"gt{clock}"), ("_count", "1")])).get("entry") or []
            if not entries:
                return clock
        stamp = _stamp(entries[0])
        return None if stamp is None else _latest([clock, stamp])

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


class ListingBroken(ResolutionError):
    """The upstream began to list its history, then could not go on (an answer that is not a
    page, an entry that is neither a version nor a DELETE, paging that does not end): unlike an
    upstream that cannot list it at all, the history it did not list was there to be removed."""


@dataclass
class Listing:
    """The system history since the patient's first version, as its pages arrive.

    Every DELETE in it (but the purge's own) is a candidate, to be read and judged. A candidate
    needs no reads when the listing alone proves it is not the patient's: none of its listed
    versions references the patient (every body listed is checked, in whatever order the
    upstream lists them), and its listed versions run unbroken up to the version before its
    DELETE. They must start at version 1 when the listing stopped at its bound or lists only the
    changes made during the purge (``from_patient``); when it holds every change since the
    patient was created, the versions before the listed ones are older
    than the patient, and nothing older than the patient references it (the premise the
    listing's start rests on). Measured on HAPI 8.4, purging 10,000 resources after another
    patient's 10,000, all written before this patient: 31.3 / 32.0 s when each of those was read
    and judged, 20.8 / 18.5 s now. A version missing in between, or the DELETE's version
    unknown, and the candidate is read and judged. What the rule rests on besides: no entry of
    the window was missed, which its pages make sure of where an ``$expunge`` beside the listing
    moves the window's entries (``fhir.history.HistoryPages.window``).

    The listing of the changes made during the purge continues the first one (``cleared(before)``):
    a candidate of the second is cleared when the two together list its every version from 1,
    none referencing the patient. That is why the versions of every resource of the
    compartment's types are kept, deleted in the listing or not (up to ``MAX_KEPT`` resources):
    beside a cohort's purges, the second listing's candidates are mostly the other members'
    resources, which the first listed live (measured on HAPI 8.4, ten 650-resource patients
    purged four at a time: 1,000-1,600 of them read and judged in a member's second listing,
    1.2-1.4 s each time). From version 1 even there: a version in neither listing is not
    proven older than the patient (one committed late, see ``LATE_COMMIT``).
    """

    patient: Key
    resolver: Resolver
    ours: Callable[[Key], bool]
    base_url: str
    since: str  # the oldest change it lists
    until: str | None = None  # it holds every change made up to then (None: no time known)
    from_patient: bool = True  # ``since`` is the patient's creation (see above)
    deleted: set[Key] = field(default_factory=set)
    deleted_at: dict[Key, int] = field(default_factory=dict)  # the version its DELETE made
    versions: dict[Key, int] = field(default_factory=dict)  # the versions listed, as bits (see ``_keep``)
    touching: set[Key] = field(default_factory=set)  # a listed version references the patient
    entries: int = 0
    stopped_at: str | None = None  # the listing stopped at its bound: the time of its oldest change

    def take(self, entry: Any) -> None:
        """One entry listed: a DELETE or a version; ``ResolutionError`` for one that is neither
        (nothing can be proven from it, and a DELETE may hide in it)."""
        request = json_object(entry.get("request")) if isinstance(entry, dict) else {}
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
            version = _int(json_object(body.get("meta")).get("versionId"))
            if version is not None:
                self._keep(listed, version)
        else:
            raise ResolutionError("_history: an entry is neither a version of a resource nor a DELETE")

    def _keep(self, key: Key, version: int) -> None:
        """``version`` of ``key`` listed, as one bit of an int (a set of versions costs 216 bytes a
        resource more): 9.7 MB for the 60,000 resources of six bench patients listed. Kept for
        the compartment's types only (no other is a candidate), and past ``MAX_KEPT`` resources
        only for those seen deleted; a version past ``MAX_VERSION`` leaves its resource
        unprovable (``UNPROVABLE``: read and judged)."""
        kept = self.versions.get(key)
        if kept is None:
            if key[0] not in self.resolver.compartment:
                return
            if len(self.versions) >= MAX_KEPT and key not in self.deleted_at:
                return
            key = (sys.intern(key[0]), key[1])  # one string per type, not per resource: 3.6 MB of 13.3 at 60,000
        bit = 1 << version if version <= MAX_VERSION else UNPROVABLE
        self.versions[key] = (kept or 0) | bit

    def continued_from(self) -> str:
        """Where a listing of the changes made after this one starts: ``LATE_COMMIT`` before its
        end (a change committed late is stamped before it), but not back past its bound; from its
        own start where no end is known."""
        start = _before(self.until, LATE_COMMIT) if self.until is not None else None
        if start is None:
            return self.since
        if self.stopped_at is not None:
            return _latest([start, self.stopped_at]) or start
        return start

    def cleared(self, before: Listing | None = None) -> set[Key]:
        """Candidates proven not the patient's by the listing alone, or with ``before``, the listing
        this one continues (see the class): its versions join this one's."""
        touching = (self.touching | before.touching) if before is not None else self.touching
        return {key for key, at in self.deleted_at.items()
                if key not in touching and key != self.patient and self._unbroken(key, at, before)}

    def _unbroken(self, key: Key, at: int, before: Listing | None = None) -> bool:
        """The versions of ``key`` listed (here or in ``before``) run without a gap up to the one
        before its DELETE (``at``): from version 1, or, when this listing holds every change since
        the patient was created (not stopped at its bound, ``from_patient``), from any. Versions
        after the DELETE are not counted: the resource was written again, and each of its
        listed versions was checked all the same (``touching``)."""
        kept = self.versions.get(key, 0) | (before.versions.get(key, 0) if before is not None else 0)
        if kept < 0 or at > MAX_VERSION:
            return False
        below = kept & ((1 << at) - 1)  # the bits of versions 0 to at - 1
        if not (self.from_patient and self.stopped_at is None):
            first = 1
        elif below:
            first = (below & -below).bit_length() - 1  # the lowest version listed
        else:
            first = at  # none listed: all older than the patient
        return below == (1 << at) - (1 << first)  # exactly the versions first to at - 1


def _oldest(entries: list[Any]) -> str:
    """When the oldest change of a history page was made (the upstream lists newest first)."""
    return next((stamp for stamp in map(_stamp, reversed(entries)) if stamp is not None),
                "a time the upstream did not give")


def _stamp(entry: Any) -> str | None:
    """When a history entry's change was made: its version's ``lastUpdated``, or for a DELETE (no
    body) the entry's ``response.lastModified``; None where the upstream gives neither."""
    if not isinstance(entry, dict):
        return None
    stamp = json_object(json_object(entry.get("resource")).get("meta")).get("lastUpdated")
    if stamp is None:
        stamp = json_object(entry.get("response")).get("lastModified")
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


def _before(stamp: str, by: timedelta) -> str | None:
    """The instant ``by`` before ``stamp`` (in milliseconds, as FHIR servers write them); None
    if ``stamp`` is not an instant."""
    try:
        return (datetime.fromisoformat(stamp) - by).isoformat(timespec="milliseconds")
    except ValueError:
        return None


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
