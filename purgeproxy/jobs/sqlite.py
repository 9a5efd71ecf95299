"""The SQLite job store: the single-node default, one file on local disk.

stdlib ``sqlite3`` on one dedicated thread: statements are short, so a thread costs less than
another dependency, and one thread owning the connection keeps sqlite3's threading rules simple.
Several processes on one host may share the file (WAL mode, a busy timeout); each statement is
atomic on its own, which is all the store needs. Not for replicas on different hosts: use
PostgreSQL there (network file systems break SQLite's locking).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from purgeproxy.jobs.sql import SCHEMA, TABLE, SqlJobStore, upgrades

BUSY_TIMEOUT_SECONDS = 30.0


class SqliteJobStore(SqlJobStore):
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    skip_locked = ""  # SQLite has one writer at a time: a claim cannot race another

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purgeproxy-jobs")
        self._connection: sqlite3.Connection | None = None

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _connect(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS,
                                     isolation_level=None, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        _write_ahead_log(connection)
        connection.execute("PRAGMA synchronous=FULL")  # a 202 promises the job survives a crash
        # One process at a time: `serve --workers 2` opening a new file had both workers see a
        # column missing and add it, and the second died ("duplicate column name"; 12 of 30
        # trials with four threads). BEGIN IMMEDIATE takes the write lock before the schema is read.
        connection.execute("BEGIN IMMEDIATE")
        try:
            _ensure_schema(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._connection = connection

    def _fetch(self, sql: str, params: Mapping[str, Any]) -> list[sqlite3.Row]:
        assert self._connection is not None, "the job store is not open"
        return self._connection.execute(sql, dict(params)).fetchall()

    async def open(self) -> None:
        await self._call(self._connect)

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        rows: Sequence[Mapping[str, Any]] = await self._call(self._fetch, sql, params)
        return rows

    async def close(self) -> None:
        if self._connection is not None:
            await self._call(self._connection.close)
            self._connection = None
        self._thread.shutdown(wait=False)


def _ensure_schema(connection: sqlite3.Connection) -> None:
    """The table, the columns added since it was first created, and the indexes."""
    for statement in SCHEMA:
        connection.execute(statement)
    present = {row["name"] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
    for statement in upgrades(present):
        connection.execute(statement)


def _write_ahead_log(connection: sqlite3.Connection) -> None:
    """WAL mode, retried while another process holds the new file: SQLite answers that switch
    "database is locked" at once, without waiting the busy timeout (2 of 30 trials with four
    threads opening one new file)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
