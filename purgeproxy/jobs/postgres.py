"""The PostgreSQL job store: shared by every replica behind a load balancer.

asyncpg (a maintained, native asyncio driver) with a small pool. Claims take the candidate row
with ``FOR UPDATE SKIP LOCKED``, so replicas polling at the same moment each get a different job
or none, and a job runs on one replica at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from purgeproxy.jobs.sql import SCHEMA, SqlJobStore, numbered, upgrades

SCHEMA_LOCK = 0x70757267  # an advisory lock id: replicas starting together create the schema once
SUBMIT_LOCK = 0x70757268  # taken by each submit, so that two replicas cannot both pass a quota


class PostgresJobStore(SqlJobStore):
    now = "extract(epoch from clock_timestamp())::float8"
    skip_locked = "FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, pool_size: int = 8) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._sql: dict[str, tuple[str, list[str]]] = {}  # rendered statement -> ($n SQL, names)

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in [*SCHEMA, *upgrades(None)]:
                await connection.execute(statement)

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        assert self._pool is not None, "the job store is not open"
        text, values = self._numbered(sql, params)
        return list(await self._pool.fetch(text, *values))

    def _numbered(self, sql: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        if sql not in self._sql:
            self._sql[sql] = numbered(sql)
        text, names = self._sql[sql]
        return text, [params[name] for name in names]

    async def fetch_serialized(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """Under a transaction-scoped advisory lock: read-committed counts are not enough when
        two replicas insert at once."""
        assert self._pool is not None, "the job store is not open"
        text, values = self._numbered(sql, params)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", SUBMIT_LOCK)
            return list(await connection.fetch(text, *values))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
