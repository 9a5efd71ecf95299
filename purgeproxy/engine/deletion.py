"""The deletion engine: planned deletes in transaction Bundles, with 409s resolved or reported.

Batches follow the plan's order. When the upstream refuses a batch because something still
references a resource (HAPI's referential integrity, 409), the engine pulls the referencing
resource into the batch when it is itself planned for deletion, or else takes the blocked
resource out and reports what blocks it: it never widens the scope to make a delete succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.verify import GONE
from purgeproxy.fhir.client import FhirClient, FhirResponse
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind

Progress = Callable[[int], Awaitable[None]]


@dataclass
class DeletionReport:
    deleted: list[Key] = field(default_factory=list)
    already_gone: list[Key] = field(default_factory=list)
    blocked: dict[Key, str] = field(default_factory=dict)
    failed: dict[Key, str] = field(default_factory=dict)
    hard_deleted: list[Key] = field(default_factory=list)
    hard_delete_failed: dict[Key, str] = field(default_factory=dict)

    def merge(self, other: DeletionReport) -> None:
        self.deleted += other.deleted
        self.already_gone += other.already_gone
        self.blocked.update(other.blocked)
        self.failed.update(other.failed)
        self.hard_deleted += other.hard_deleted
        self.hard_delete_failed.update(other.hard_delete_failed)


def _transaction(keys: list[Key]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"{t}/{i}"}} for t, i in keys],
    }


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
    max_attempts: int = 50

    async def delete(self, order: list[Key], progress: Progress | None = None) -> DeletionReport:
        report = DeletionReport()
        pending = list(order)
        while pending:
            batch, pending = pending[: self.batch_size], pending[self.batch_size:]
            done = await self._batch(batch, pending, report)
            if self.hard_delete and done:
                await self._hard_delete(done, report)
            if progress:
                await progress(len(report.deleted) + len(report.already_gone))
        return report

    async def _batch(self, batch: list[Key], pending: list[Key], report: DeletionReport) -> list[Key]:
        """Delete one batch, regrouping on conflicts; returns what is now gone."""
        for _ in range(self.max_attempts):
            if not batch:
                return []
            async with self.limit:
                answer = await self.client.request("POST", "", json=_transaction(batch))
            if answer.status == 200 and answer.resource_type == "Bundle":
                return self._record(batch, answer, report)
            conflict = self.server.conflict(answer.body) if answer.status in (409, 412) else None
            if conflict is None:
                break
            blocked, blocker = conflict
            if blocker in pending:
                pending.remove(blocker)
                batch.insert(0, blocker)  # planned anyway: delete it together with what it references
            elif blocked in batch and blocker not in batch:
                batch.remove(blocked)
                why = ("itself kept" if blocker in report.blocked else "itself not deleted" if blocker in report.failed
                       else "not planned for deletion: outside the scope, or kept by policy")
                report.blocked[blocked] = f"still referenced by {blocker[0]}/{blocker[1]} ({why})"
            else:
                break
        return await self._one_by_one(batch, report)

    def _record(self, batch: list[Key], answer: FhirResponse, report: DeletionReport) -> list[Key]:
        entries = answer.body.get("entry") or []
        done: list[Key] = []
        for index, key in enumerate(batch):
            entry = entries[index] if index < len(entries) else {}
            status = _status((entry.get("response") or {}).get("status", "200"))
            if 200 <= status < 300:
                report.deleted.append(key)
                done.append(key)
            elif status in GONE:
                report.already_gone.append(key)
                done.append(key)
            else:
                report.failed[key] = f"transaction entry answered {status}"
        return done

    async def _one_by_one(self, batch: list[Key], report: DeletionReport) -> list[Key]:
        """The upstream refused the batch for a reason we cannot regroup around: isolate it."""
        done: list[Key] = []
        for key in batch:
            async with self.limit:
                answer = await self.client.request("DELETE", f"{key[0]}/{key[1]}")
            if 200 <= answer.status < 300:
                report.deleted.append(key)
                done.append(key)
            elif answer.status in GONE:
                report.already_gone.append(key)
                done.append(key)
            else:
                conflict = self.server.conflict(answer.body)
                reason = (f"still referenced by {conflict[1][0]}/{conflict[1][1]}" if conflict
                          else f"DELETE answered {answer.status}")
                (report.blocked if conflict else report.failed)[key] = reason
        return done

    async def _hard_delete(self, keys: list[Key], report: DeletionReport) -> None:
        async def one(key: Key) -> None:
            async with self.limit:
                error = await self.server.hard_delete(self.client, key)
            if error is None:
                report.hard_deleted.append(key)
            else:
                report.hard_delete_failed[key] = error

        await asyncio.gather(*(one(key) for key in keys))
