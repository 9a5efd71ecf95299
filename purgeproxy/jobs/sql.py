"""The job store in SQL, written once for both backends.

SQLite (3.35+) and PostgreSQL agree on everything used here (partial unique indexes, upserts,
``RETURNING``) except two things, kept as template slots: the database's clock (``{now}``, epoch
seconds) and the row lock that lets replicas skip each other's candidates (``{skip_locked}``).
Times come from the database's clock, never a replica's, so that replicas with skewed clocks
still agree on when a lease expired. Parameters are written ``:name`` (sqlite3's style) and
turned into ``$n`` for asyncpg by :func:`numbered`.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from purgeproxy.jobs.store import (
    ACTIVE,
    FinalStatus,
    Job,
    JobFilter,
    JobStore,
    Quota,
    QuotaExceeded,
    job_from_row,
)

TABLE = "purgeproxy_jobs"
_ACTIVE = "(" + ", ".join(f"'{status}'" for status in ACTIVE) + ")"  # ('new', 'processing')

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id TEXT PRIMARY KEY, operation TEXT NOT NULL, target TEXT NOT NULL, payload TEXT NOT NULL,
        status TEXT NOT NULL, total INTEGER, done INTEGER NOT NULL DEFAULT 0, result TEXT,
        owner TEXT, lease_until DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, caller TEXT)""",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_active ON {TABLE} (target) WHERE status IN {_ACTIVE}",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_queue ON {TABLE} (status, created_at)",
)
# Columns added after the table's first release, which an older table lacks.
# ``parent``: the fan-out job a per-patient child belongs to (NULL for a job somebody submitted).
_ADDED_COLUMNS = (("caller", "TEXT"), ("parent", "TEXT"))
# Indexes on added columns, created once the columns exist.
_ADDED_INDEXES = (f"CREATE INDEX IF NOT EXISTS {TABLE}_parent ON {TABLE} (parent)",)


def upgrades(present: Collection[str] | None) -> list[str]:
    """What brings a table made by ``SCHEMA`` (perhaps by an older release) to this one: the
    columns added since, then their indexes. ``present``: the table's columns, for a database
    that cannot add a column only where it is missing (SQLite has no ``ADD COLUMN IF NOT
    EXISTS``); None for one that can (PostgreSQL)."""
    if present is None:
        columns = [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {column} {kind}" for column, kind in _ADDED_COLUMNS]
    else:
        columns = [f"ALTER TABLE {TABLE} ADD COLUMN {column} {kind}" for column, kind in _ADDED_COLUMNS
                   if column not in present]
    return [*columns, *_ADDED_INDEXES]


# The quota is checked by the statement that inserts, so that two submits cannot both pass it.
INSERT = f"""INSERT INTO {TABLE} (id, operation, target, payload, caller, status, created_at, updated_at)
    SELECT :id, :operation, :target, :payload, :caller, 'new', {{now}}, {{now}}
    WHERE (SELECT COUNT(*) FROM {TABLE} WHERE status IN {_ACTIVE} AND caller = :caller) < :per_caller
      AND (SELECT COUNT(*) FROM {TABLE} WHERE status IN {_ACTIVE} AND parent IS NULL) < :total
    ON CONFLICT (target) WHERE status IN {_ACTIVE} DO NOTHING RETURNING *"""
ACTIVE_COUNTS = f"""SELECT COUNT(*) AS total,
        COALESCE(SUM(CASE WHEN caller = :caller THEN 1 ELSE 0 END), 0) AS mine
    FROM {TABLE} WHERE status IN {_ACTIVE} AND parent IS NULL"""
ACTIVE_FOR = f"SELECT * FROM {TABLE} WHERE target = :target AND status IN {_ACTIVE}"
GET = f"SELECT * FROM {TABLE} WHERE id = :id"
CLAIM = f"""UPDATE {TABLE} SET status = 'processing', owner = :owner, attempts = attempts + 1,
        lease_until = {{now}} + :lease, updated_at = {{now}}
    WHERE id = (SELECT id FROM {TABLE} WHERE status IN {_ACTIVE}
                AND (lease_until IS NULL OR lease_until < {{now}})
                ORDER BY created_at LIMIT 1 {{skip_locked}})
    RETURNING *"""
CHECKPOINT = f"""UPDATE {TABLE} SET lease_until = {{now}} + :lease, updated_at = {{now}},
        done = COALESCE(:done, done), total = COALESCE(:total, total)
    WHERE id = :id AND owner = :owner AND status = 'processing' RETURNING id"""
FINISH = f"""UPDATE {TABLE} SET result = :result, lease_until = NULL, updated_at = {{now}},
        done = COALESCE(:done, done),
        status = CASE WHEN status = 'cancelled' THEN status ELSE :status END
    WHERE id = :id AND owner = :owner AND status IN ('processing', 'cancelled') RETURNING id"""
RELEASE = f"""UPDATE {TABLE} SET owner = NULL, lease_until = NULL
    WHERE id = :id AND owner = :owner AND status = 'processing' RETURNING id"""
CANCEL = f"""UPDATE {TABLE} SET status = 'cancelled', updated_at = {{now}}
    WHERE id = :id AND status IN {_ACTIVE} RETURNING id"""
# The job list: every filter is optional (NULL: not filtered), so one text serves every request;
# the casts let PostgreSQL type a parameter that may be NULL.
LIST = f"""SELECT * FROM {TABLE}
    WHERE parent IS NULL AND (CAST(:caller AS TEXT) IS NULL OR caller = :caller)
      AND (CAST(:status AS TEXT) IS NULL OR status = :status)
      AND (CAST(:operation AS TEXT) IS NULL OR operation = :operation)
      AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR updated_at >= :since)
    ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"""
# Retention: finished jobs untouched for longer than ``jobs.retention_days``; active ones stay.
REMOVE_FINISHED = f"""DELETE FROM {TABLE}
    WHERE status NOT IN {_ACTIVE} AND updated_at < {{now}} - :age RETURNING id"""
# Fan-out: a child has no caller (it counts against no quota: its parent does) and a
# deterministic id; it is not stored while another active job holds its target (the patient).
INSERT_CHILD = f"""INSERT INTO {TABLE} (id, operation, target, payload, parent, status, created_at, updated_at)
    SELECT :id, :operation, :target, :payload, :parent, 'new', {{now}}, {{now}}
    WHERE NOT EXISTS (SELECT 1 FROM {TABLE} WHERE id = :id)
    ON CONFLICT (target) WHERE status IN {_ACTIVE} DO NOTHING RETURNING *"""
CHILDREN = f"SELECT * FROM {TABLE} WHERE parent = :parent ORDER BY created_at, id"
# The same rows without their JSON (progress only): a 200-patient job's finished children hold
# some 60 KB of answer each, read and parsed at every poll of the parent and of its status.
CHILDREN_PROGRESS = f"""SELECT id, operation, target, '{{{{}}}}' AS payload, status, total, done, NULL AS result,
        owner, attempts, updated_at, created_at, parent FROM {TABLE} WHERE parent = :parent ORDER BY created_at, id"""
CLAIM_CHILD = f"""UPDATE {TABLE} SET status = 'processing', owner = :owner, attempts = attempts + 1,
        lease_until = {{now}} + :lease, updated_at = {{now}}
    WHERE id = (SELECT id FROM {TABLE} WHERE parent = :parent AND status IN {_ACTIVE}
                AND (lease_until IS NULL OR lease_until < {{now}})
                ORDER BY created_at LIMIT 1 {{skip_locked}})
    RETURNING *"""
CANCEL_CHILDREN = f"""UPDATE {TABLE} SET status = 'cancelled', updated_at = {{now}}
    WHERE parent = :parent AND status IN {_ACTIVE} RETURNING id"""

UNLIMITED = 2**62  # the quota of a submit without one; fits PostgreSQL's bigint

_PARAM = re.compile(r"(?<!:):([a-z_]+)")


def numbered(sql: str) -> tuple[str, list[str]]:
    """``:name`` parameters as ``$1, $2 …`` (asyncpg), with the names in order of number."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PARAM.sub(number, sql), names


class SqlJobStore(JobStore):
    """Every JobStore method as one conditional statement; backends supply :meth:`fetch`."""

    now: str  # an SQL expression: the database's clock in epoch seconds
    skip_locked: str  # "FOR UPDATE SKIP LOCKED" where the database has row locks

    @abstractmethod
    async def fetch(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """Run one statement (``{now}``/``{skip_locked}`` already filled in); return its rows."""

    def render(self, template: str) -> str:
        return template.format(now=self.now, skip_locked=self.skip_locked)

    async def fetch_serialized(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """:meth:`fetch`, never concurrently with another such call on any replica; SQLite
        needs nothing more (a writing statement holds the database's one write lock)."""
        return await self.fetch(sql, params)

    async def rows(self, template: str, **params: Any) -> Sequence[Mapping[str, Any]]:
        return await self.fetch(self.render(template), params)

    async def submit(self, job_id: str, operation: str, target: str, payload: dict[str, Any],
                     quota: Quota | None = None) -> tuple[Job, bool]:
        caller, per_caller, total = ((quota.caller, quota.per_caller, quota.total) if quota
                                     else (None, UNLIMITED, UNLIMITED))
        for _ in range(5):  # the active job may finish between the statements: try again
            created = await self.fetch_serialized(self.render(INSERT), dict(
                id=job_id, operation=operation, target=target, payload=json.dumps(payload),
                caller=caller, per_caller=per_caller, total=total))
            if created:
                return job_from_row(created[0]), True
            existing = await self.rows(ACTIVE_FOR, target=target)
            if existing:
                return job_from_row(existing[0]), False
            if quota is not None:
                await self._check(quota)
        raise RuntimeError(f"could not store a job for {target}")

    async def _check(self, quota: Quota) -> None:
        """Raise ``QuotaExceeded`` naming the bound that refused the insert, if one did."""
        counts = (await self.rows(ACTIVE_COUNTS, caller=quota.caller))[0]
        if counts["mine"] >= quota.per_caller:
            raise QuotaExceeded("caller", quota.per_caller)
        if counts["total"] >= quota.total:
            raise QuotaExceeded("queue", quota.total)

    async def get(self, job_id: str) -> Job | None:
        found = await self.rows(GET, id=job_id)
        return job_from_row(found[0]) if found else None

    async def active_jobs(self, caller: str) -> int:
        return int((await self.rows(ACTIVE_COUNTS, caller=caller))[0]["mine"])

    async def claim(self, owner: str, lease_seconds: float) -> Job | None:
        claimed = await self.rows(CLAIM, owner=owner, lease=float(lease_seconds))
        return job_from_row(claimed[0]) if claimed else None

    async def checkpoint(self, job_id: str, owner: str, lease_seconds: float,
                         progress: tuple[int, int] | None = None) -> bool:
        done, total = progress if progress else (None, None)
        return bool(await self.rows(CHECKPOINT, id=job_id, owner=owner, lease=float(lease_seconds),
                                    done=done, total=total))

    async def finish(self, job_id: str, owner: str, status: FinalStatus, result: dict[str, Any],
                     done: int | None = None) -> bool:
        return bool(await self.rows(FINISH, id=job_id, owner=owner, status=status,
                                    result=json.dumps(result), done=done))

    async def release(self, job_id: str, owner: str) -> None:
        await self.rows(RELEASE, id=job_id, owner=owner)

    async def cancel(self, job_id: str) -> Job | None:
        await self.rows(CANCEL, id=job_id)
        await self.rows(CANCEL_CHILDREN, parent=job_id)
        return await self.get(job_id)

    async def list_jobs(self, where: JobFilter, limit: int, offset: int = 0) -> list[Job]:
        since = where.since.timestamp() if where.since is not None else None
        rows = await self.rows(LIST, caller=where.caller, status=where.status, operation=where.operation,
                               since=since, limit=limit, offset=offset)
        return [job_from_row(row) for row in rows]

    async def remove_finished(self, older_than_seconds: float) -> int:
        return len(await self.rows(REMOVE_FINISHED, age=float(older_than_seconds)))

    async def submit_child(self, job_id: str, parent: str, operation: str, target: str,
                           payload: dict[str, Any]) -> Job | None:
        created = await self.fetch_serialized(self.render(INSERT_CHILD), dict(
            id=job_id, operation=operation, target=target, payload=json.dumps(payload), parent=parent))
        return job_from_row(created[0]) if created else await self.get(job_id)

    async def children(self, parent: str, answers: bool = True) -> list[Job]:
        return [job_from_row(row) for row in await self.rows(CHILDREN if answers else CHILDREN_PROGRESS,
                                                              parent=parent)]

    async def claim_child(self, parent: str, owner: str, lease_seconds: float) -> Job | None:
        claimed = await self.rows(CLAIM_CHILD, parent=parent, owner=owner, lease=float(lease_seconds))
        return job_from_row(claimed[0]) if claimed else None

