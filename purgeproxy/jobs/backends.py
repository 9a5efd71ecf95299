"""The backend a ``jobs.store`` setting names. Apart from ``store`` (the interface), which the
backends import, so that the interface never imports its implementations."""

from __future__ import annotations

from purgeproxy.jobs.store import JobStore


def open_store(location: str) -> JobStore:
    """A PostgreSQL URL opens the PostgreSQL store, anything else is an SQLite file path.

    asyncpg is imported only when PostgreSQL is configured."""
    if location.startswith(("postgresql://", "postgres://")):
        from purgeproxy.jobs.postgres import PostgresJobStore

        return PostgresJobStore(location)
    from purgeproxy.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(location)
