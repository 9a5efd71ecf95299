"""The deletion engine: planned deletes in transaction Bundles, with 409s resolved or reported.

Batches follow the plan's order. When the upstream refuses a batch because something still
references a resource (HAPI's referential integrity, 409), the engine pulls the referencing
resource into the batch when it is itself planned for deletion, or else takes the blocked
resource out and reports what blocks it: it never widens the scope to make a delete succeed.

A resource is deleted only in the state the proxy examined. Just before each batch the engine
reads every resource again; one whose version differs from the one planned is examined again
with the operation's own scope check (``recheck``) and deleted in its new version only if it is
still in scope, otherwise kept and reported as changed since planning. Deletes carry the version
read (``ifMatch`` on transaction entries, ``If-Match`` on single DELETEs) so that an upstream that
honours it refuses (412) a change made after that read; the batch is then read and examined
again. Measured: HAPI 8.4 ignores both, and the Medplum engine ignores ``ifMatch`` in transactions
but honours ``If-Match`` on a single DELETE, so on those the read just before the delete is what
pins the version; a change in the moment between that read and the delete cannot be prevented.
It is seen where the upstream numbers versions 1, 2, 3 and names the version its DELETE wrote
(HAPI's ``etag``): a delete that wrote more than one version past the one read deleted a state
the proxy never examined. That resource is reported as an error and its history is not hard
deleted, so that what was changed can still be restored from it.

Batches go side by side (``Deleter.transactions``) only where the plan shows that none in flight
references anything in the next (``refs``), so that order is kept where an upstream enforcing
referential integrity needs it; without the plan's references, one batch at a time.

A resource another client deleted after the proxy examined it (found gone when read, or by its
transaction entry) has its history removed only when the last version before that DELETE is the
one examined or is still in scope: one moved to another patient and then deleted holds that
patient's version, which the hard delete would take. It is reported instead, its history kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.observer import NO_OBSERVER, Observer
from purgeproxy.engine.verify import Reading, read_current, read_histories, version_of
from purgeproxy.fhir.client import GONE, FhirClient, FhirResponse
from purgeproxy.fhir.references import Key
from purgeproxy.fhir.search import ResolutionError
from purgeproxy.servers.base import ServerKind

Progress = Callable[[int], Awaitable[None]]
# the current bodies of resources that changed since they were planned -> the keys still in scope
Recheck = Callable[[list[dict[str, Any]]], Awaitable[set[Key]]]
Versions = Mapping[Key, str | None]  # the version each resource was examined in (None: unknown)
References = Mapping[Key, frozenset[Key]]  # what each planned resource references
CHANGED = "changed since it was planned and is no longer in scope; kept"


@dataclass
class DeletionReport:
    deleted: list[Key] = field(default_factory=list)
    already_gone: list[Key] = field(default_factory=list)
    blocked: dict[Key, str] = field(default_factory=dict)
    failed: dict[Key, str] = field(default_factory=dict)
    hard_deleted: list[Key] = field(default_factory=list)
    hard_delete_failed: dict[Key, str] = field(default_factory=dict)
    changed: dict[Key, str] = field(default_factory=dict)  # changed since planning, now out of scope
    unexamined: dict[Key, str] = field(default_factory=dict)  # deleted in a version never read
    blockers: dict[Key, Key] = field(default_factory=dict)  # blocked -> the resource referencing it

    def merge(self, other: DeletionReport) -> None:
        self.deleted += other.deleted
        self.already_gone += other.already_gone
        self.blocked.update(other.blocked)
        self.failed.update(other.failed)
        self.hard_deleted += other.hard_deleted
        self.hard_delete_failed.update(other.hard_delete_failed)
        self.changed.update(other.changed)
        self.unexamined.update(other.unexamined)
        self.blockers.update(other.blockers)

    @property
    def removed(self) -> int:
        """What progress counts: deleted now, or found already gone."""
        return len(self.deleted) + len(self.already_gone)


def _if_match(version: str | None) -> dict[str, str]:
    return {"ifMatch": f'W/"{version}"'} if version else {}


class _ReadAhead:
    """The next batch's read, started while the batch before it is deleted: each batch is still
    read after everything planned before it and before its own DELETEs are sent, but the read no
    longer waits for the previous transaction (on the Medplum engine the reads were as slow as
    the deletes). Used only for exactly the keys it read: a regrouped batch is read afresh."""

    def __init__(self, client: FhirClient, limit: asyncio.Semaphore, enabled: bool = True) -> None:
        self.client, self.limit, self.enabled = client, limit, enabled
        self.keys: list[Key] = []
        self.task: asyncio.Future[Reading] | None = None

    def start(self, keys: list[Key]) -> None:
        self.drop()
        if keys and self.enabled:
            self.keys, self.task = list(keys), asyncio.ensure_future(read_current(self.client, self.limit, keys))

    async def take(self, keys: list[Key]) -> Reading | None:
        task, same = self.task, self.keys == keys
        self.task = None
        if task is None:
            return None
        if not same:
            task.cancel()
            return None
        return await task

    def drop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


def _waits(batch: list[Key], running: Iterable[list[Key]], refs: References | None) -> bool:
    """Whether ``batch`` must wait for the batches in flight: one of them may reference something
    in it (or references what the plan does not know)."""
    keys = set(batch)
    for in_flight in running:
        for key in in_flight:
            cited = refs.get(key) if refs is not None else None
            if cited is None or not cited.isdisjoint(keys):
                return True
    return False


def _transaction(keys: list[Key], versions: Versions) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"{t}/{i}", **_if_match(versions.get((t, i)))}}
                  for t, i in keys],
    }


def _raced(read: str | None, written: Any) -> str | None:
    """Why a DELETE that wrote version ``written`` did not delete version ``read``; None when it
    did, or when the upstream's versions do not tell (not consecutive numbers)."""
    wrote = str(written or "").removeprefix("W/").strip('"')
    if not (read and read.isdigit() and wrote.isdigit()) or int(wrote) <= int(read) + 1:
        return None
    return (f"changed after the proxy read it (version {read}) and was deleted in a later version "
            f"the proxy never examined (the delete wrote version {wrote}); its history is kept so "
            "that it can be restored")


def _last_version(versions: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The newest version in a history: the highest version number, or where versions are not
    numbers the first listed (FHIR lists history newest first); None when none is left."""
    if not versions:
        return None
    numbered = [(int(v), body) for body in versions if (v := version_of(body) or "").isdigit()]
    return max(numbered, key=lambda pair: pair[0])[1] if len(numbered) == len(versions) else versions[0]


def _deleted_elsewhere(version: str | None) -> str:
    return (f"was deleted by another client after the proxy examined it, in a version it never examined "
            f"(version {version or 'unknown'}) that is no longer in scope; its history is kept")


def _status(text: str) -> int:
    try:
        return int(str(text).split()[0])
    except (ValueError, IndexError):
        return 0


@dataclass
class Deleter:
    client: FhirClient
    server: ServerKind
    batch_size: int
    limit: asyncio.Semaphore
    hard_delete: bool
    recheck: Recheck | None = None  # None: every resource stays in scope whatever changed (named ones)
    max_attempts: int = 50
    observer: Observer = NO_OBSERVER  # times the hard delete ("expunge")
    hard_limit: asyncio.Semaphore | None = None  # hard deletes in flight, besides ``limit`` (None: ``limit``)
    # hard deletes wait for it, the transactions do not: the purge's listing of the system history
    # (an $expunge removes history rows, which would shift the pages of a listing still running)
    hard_after: asyncio.Event | None = None
    transactions: int = 1  # batches in flight at once (see ``delete``)

    async def delete(self, order: list[Key], progress: Progress | None = None,
                     versions: Versions | None = None, report: DeletionReport | None = None,
                     refs: References | None = None) -> DeletionReport:
        """Delete ``order`` in batches, each resource only in the version it was examined in
        (``versions``; a resource without one is examined again before it is deleted). ``report``
        is filled batch by batch: a caller whose ``progress`` stops the run (a cancelled job)
        still knows what was deleted, the batches still in flight included.

        Up to ``transactions`` batches go at once, a batch only beside batches that reference
        nothing in it (``refs``: what each planned resource references; without it, one batch
        at a time): an upstream enforcing referential integrity refuses a delete while a
        reference to it remains, which is why ``order`` puts referencing resources first."""
        report = DeletionReport() if report is None else report
        pinned = dict(versions or {})
        pending = list(order)  # shared by the batches in flight: a conflict pulls a blocker from it
        hard: list[asyncio.Future[None]] = []  # a batch's hard deletes run while the next batch goes
        # one batch at a time, the next is read while it goes; side by side, each reads its own
        ahead = _ReadAhead(self.client, self.limit, enabled=self.transactions == 1)
        running: dict[asyncio.Future[tuple[list[Key], DeletionReport]], list[Key]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.transactions and not _waits(
                        pending[: self.batch_size], running.values(), refs):
                    batch = pending[: self.batch_size]
                    del pending[: self.batch_size]
                    running[asyncio.ensure_future(self._batch_alone(batch, pending, pinned, report, ahead))] = batch
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    del running[task]
                    self._settle(task.result(), pinned, report, hard)
                if progress:
                    await progress(report.removed)
        except BaseException:
            if running:  # stopped: what the batches in flight deleted is still recorded
                told = report.removed
                await asyncio.wait(running)
                for task in running:
                    if not task.cancelled() and task.exception() is None:
                        self._settle(task.result(), pinned, report, hard)
                if progress and report.removed > told:
                    # the stopped caller counts from what it was last told (a cancelled job's
                    # count, a checkpoint before SIGTERM): tell it what the drained batches
                    # removed. It stops again; the exception on its way already says why.
                    with contextlib.suppress(Exception):
                        await progress(report.removed)
            raise
        finally:
            ahead.drop()
            await asyncio.gather(*hard)
        return report

    async def _batch_alone(self, batch: list[Key], pending: list[Key], pinned: dict[Key, str | None],
                           known: DeletionReport, ahead: _ReadAhead) -> tuple[list[Key], DeletionReport]:
        """One batch with a report of its own (merged by ``_settle``): batches run side by side."""
        report = DeletionReport()
        done = await self._batch(batch, pending, pinned, report, ahead, known)
        return done, report

    def _settle(self, batch: tuple[list[Key], DeletionReport], pinned: Versions, report: DeletionReport,
                hard: list[asyncio.Future[None]]) -> None:
        """A finished batch joins the report, and its hard deletes start."""
        done, its = batch
        report.merge(its)
        if self.hard_delete and done:
            gone = set(its.already_gone)
            hard.append(asyncio.ensure_future(self._timed_hard_delete(done, gone, pinned, report)))

    async def _timed_hard_delete(self, keys: list[Key], gone: set[Key], pinned: Versions,
                                 report: DeletionReport) -> None:
        """Hard-delete ``keys``; those in ``gone`` were deleted by someone else, only if in scope."""
        if self.hard_after is not None:
            await self.hard_after.wait()
        with self.observer.phase("expunge"):
            proven = await self._deleted_in_scope([key for key in keys if key in gone], pinned, report)
            await self._hard_delete([key for key in keys if key not in gone or key in proven], report)

    async def _deleted_in_scope(self, keys: list[Key], pinned: Versions, report: DeletionReport) -> set[Key]:
        """Which of ``keys``, found deleted by another client, were deleted in a state in scope.

        Their history is removed only then: one moved to another patient and deleted after the
        proxy examined it holds that patient's version, which an ``$expunge`` would take. The
        last version before the DELETE must be the one examined, or pass the operation's scope
        check (``recheck``); named resources (no ``recheck``) are in scope whatever they hold.
        A history already gone (404/410) or empty has nothing left of anyone to remove.
        """
        if not keys or self.recheck is None:
            return set(keys)
        try:
            histories = await read_histories(self.client, self.limit, keys)
        except ResolutionError as failure:
            report.hard_delete_failed.update(dict.fromkeys(keys, f"its history could not be read to prove "
                                                                 f"what was deleted: {failure}"))
            return set()
        last = {key: _last_version(versions) for key, versions in zip(keys, histories, strict=True)}
        unexamined = {key: body for key, body in last.items()
                      if body is not None and version_of(body) != pinned.get(key)}
        in_scope = await self.recheck(list(unexamined.values())) if unexamined else set()
        for key, body in unexamined.items():
            if key not in in_scope or (body.get("resourceType"), body.get("id")) != key:
                report.unexamined[key] = _deleted_elsewhere(version_of(body))
        return {key for key in keys if key not in report.unexamined}

    async def _examine(self, keys: list[Key], pinned: dict[Key, str | None],
                       report: DeletionReport, reading: Reading | None = None) -> list[Key]:
        """Read ``keys`` now (``reading``: already read, while the batch before was deleted): what
        is gone is recorded, what changed since planning is examined again; returns the keys to
        delete, with ``pinned`` holding the version each was read in."""
        reading = reading or await read_current(self.client, self.limit, keys)
        report.already_gone += reading.gone
        report.failed.update(reading.unreadable)
        changed = [body for key, body in reading.current.items()
                   if version_of(body) is None or version_of(body) != pinned.get(key)]
        still = (await self.recheck(changed) if self.recheck and changed
                 else {(b["resourceType"], b["id"]) for b in changed})
        for body in changed:
            key = (body["resourceType"], body["id"])
            if key in still:
                pinned[key] = version_of(body)
            else:
                report.changed[key] = CHANGED
        return [key for key in keys if key in reading.current and key not in report.changed]

    async def _batch(self, batch: list[Key], pending: list[Key], pinned: dict[Key, str | None],
                     report: DeletionReport, ahead: _ReadAhead, known: DeletionReport) -> list[Key]:
        """Delete one batch, regrouping on conflicts; returns what is now gone. ``known``: what
        the batches before it found (to say why a blocker was not deleted)."""
        done: list[Key] = []
        for _ in range(self.max_attempts):
            gone_before = len(report.already_gone)
            batch = await self._examine(batch, pinned, report, await ahead.take(batch))
            done += report.already_gone[gone_before:]
            if not batch:
                return done
            ahead.start(pending[: self.batch_size])  # the next batch is read while this one goes
            async with self.limit:
                answer = await self.client.request("POST", "", json=_transaction(batch, pinned))
            if answer.status == 200 and answer.resource_type == "Bundle":
                return done + self._record(batch, answer, pinned, report)
            conflict = self.server.conflict(answer.body) if answer.status in (409, 412) else None
            if conflict is None and answer.status == 412:
                continue  # a version changed after it was read (the upstream honoured ifMatch)
            if conflict is None:
                break
            blocked, blocker = conflict
            if blocker in pending:
                pending.remove(blocker)
                batch.insert(0, blocker)  # planned anyway: delete it together with what it references
            elif blocked in batch and blocker not in batch:
                batch.remove(blocked)
                why = ("itself kept" if blocker in report.blocked or blocker in known.blocked
                       else "itself not deleted" if blocker in report.failed or blocker in known.failed
                       else "not planned for deletion: outside the scope, or kept by policy")
                report.blocked[blocked] = f"still referenced by {blocker[0]}/{blocker[1]} ({why})"
                report.blockers[blocked] = blocker
            else:
                break
        return done + await self._one_by_one(batch, pinned, report)

    def _record(self, batch: list[Key], answer: FhirResponse, pinned: Versions,
                report: DeletionReport) -> list[Key]:
        entries = answer.body.get("entry") or []
        done: list[Key] = []
        for index, key in enumerate(batch):
            entry = entries[index] if index < len(entries) else {}
            response = entry.get("response") or {}
            status = _status(response.get("status", "200"))
            raced = _raced(pinned.get(key), response.get("etag")) if 200 <= status < 300 else None
            if raced:
                report.deleted.append(key)
                report.unexamined[key] = raced  # not hard deleted: its history can restore it
            elif 200 <= status < 300:
                report.deleted.append(key)
                done.append(key)
            elif status in GONE:
                report.already_gone.append(key)
                done.append(key)
            else:
                report.failed[key] = f"transaction entry answered {status}"
        return done

    async def _one_by_one(self, batch: list[Key], pinned: dict[Key, str | None],
                          report: DeletionReport) -> list[Key]:
        """The upstream refused the batch for a reason we cannot regroup around: isolate it."""
        done: list[Key] = []
        for key in batch:
            for _ in range(self.max_attempts):
                gone_before = len(report.already_gone)
                if not await self._examine([key], pinned, report):
                    done += report.already_gone[gone_before:]
                    break
                headers = {"If-Match": f'W/"{pinned[key]}"'} if pinned.get(key) else None
                async with self.limit:
                    answer = await self.client.request("DELETE", f"{key[0]}/{key[1]}", headers=headers)
                if answer.status != 412:
                    done += self._record_one(key, answer, pinned, report)
                    break  # 412: it changed after the read; examine it again
        return done

    def _record_one(self, key: Key, answer: FhirResponse, pinned: Versions,
                    report: DeletionReport) -> list[Key]:
        if 200 <= answer.status < 300:
            report.deleted.append(key)
            raced = _raced(pinned.get(key), answer.headers.get("etag"))
            if raced:
                report.unexamined[key] = raced
                return []
            return [key]
        if answer.status in GONE:
            report.already_gone.append(key)
            return [key]
        conflict = self.server.conflict(answer.body)
        reason = (f"still referenced by {conflict[1][0]}/{conflict[1][1]}" if conflict
                  else f"DELETE answered {answer.status}")
        (report.blocked if conflict else report.failed)[key] = reason
        if conflict:
            report.blockers[key] = conflict[1]
        return []

    async def _hard_delete(self, keys: list[Key], report: DeletionReport) -> None:
        await hard_delete_each(self.client, self.server, self.hard_limit or self.limit, keys,
                               report.hard_deleted, report.hard_delete_failed)


async def hard_delete_each(client: FhirClient, server: ServerKind, limit: asyncio.Semaphore, keys: list[Key],
                           removed: list[Key], failed: dict[Key, str]) -> None:
    """Each resource's history removed with the upstream's own mechanism, ``limit`` at once, and
    recorded in ``removed`` or (with why) ``failed`` as it answers: a stopped run keeps what was done."""
    async def one(key: Key) -> None:
        async with limit:
            error = await server.hard_delete(client, key)
        if error is None:
            removed.append(key)
        else:
            failed[key] = error

    await asyncio.gather(*(one(key) for key in keys))
