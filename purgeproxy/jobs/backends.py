"""The backend a ``jobs.store`` setting names. Apart from ``store`` (the interface), which the
backends import, so that the interface never imports its implementations."""

from __future__ import annotations

import re

from purgeproxy.config import ConfigError
from purgeproxy.jobs.store import JobStore


def open_store(location: str) -> JobStore:
    """A PostgreSQL URL opens the PostgreSQL store, anything else is an SQLite file path.

    asyncpg is imported only when PostgreSQL is configured."""
    if location.startswith(("postgresql://", "postgres://")):
        from purgeproxy.jobs.postgres import PostgresJobStore

        return PostgresJobStore(location)
    from purgeproxy.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(location)


async def connect(location: str) -> JobStore:
    """The store, opened; a store that cannot be opened is a configuration mistake said in one
    line (the driver's cause, the URL's password left out), so start-up ends without a traceback
    whichever part of the app opens it first (the receipts' ledger or the job workers)."""
    store = open_store(location)
    try:
        await store.open()
    except Exception as error:  # any driver's error: the cause is named, the process stops
        shown = store_name(location)
        raise ConfigError(f"jobs.store: cannot open {shown} ({_cause(error).replace(location, shown)})") from None
    return store


def store_name(location: str) -> str:
    """The store as it may be printed: a URL's password is left out."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", location)


def _cause(error: BaseException) -> str:
    """What went wrong, in the driver's words when it has some, else the error's kind."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())[:200]
