"""The job machinery's life in the app: open the store, start the workers, stop them cleanly.

Registered after the upstream clients, so it is torn down before them: on shutdown the workers
stop claiming, let the batch in flight finish and checkpoint, and give their leases back while
the upstream client still works. The runners are the declared operations' ``job_runner``s.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from purgeproxy.app_keys import CONFIG, JOB_STORE, JOB_WORKERS
from purgeproxy.config import Config, ConfigError
from purgeproxy.jobs.backends import open_store
from purgeproxy.jobs.worker import WorkerPool, WorkerSettings
from purgeproxy.logs import get_logger
from purgeproxy.operations import OPERATIONS
from purgeproxy.operations.unit import job_runners
from purgeproxy.receipts.routes import REAPPLY
from purgeproxy.receipts.routes import run_job as reapply_job

log = get_logger("purgeproxy.jobs")


def store_name(location: str) -> str:
    """The store as it may be printed: a URL's password is left out."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", location)


def cause(error: BaseException) -> str:
    """What went wrong, in the driver's words when it has some, else the error's kind."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())[:200]


def worker_count(config: Config) -> int:
    """A read-only process runs no job at all, whoever queued it: with a shared store another
    replica may have queued it, and read-only means nothing destructive happens here."""
    return 0 if config.safety.read_only else config.jobs.workers


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].jobs
    store = app[JOB_STORE] = open_store(settings.store)
    try:
        await store.open()
    except Exception as error:  # any driver's error: the cause is named, the process stops
        shown = store_name(settings.store)
        raise ConfigError(f"jobs.store: cannot open {shown} ({cause(error).replace(settings.store, shown)})") from None
    size = worker_count(app[CONFIG])
    runners = job_runners(app, OPERATIONS) | {REAPPLY: partial(reapply_job, app)}
    workers = app[JOB_WORKERS] = WorkerPool(store, runners, WorkerSettings(
        size, settings.lease_seconds, settings.poll_seconds, settings.max_attempts))
    workers.start()
    log.info("jobs_started", workers=size, backend=type(store).__name__, name=workers.name,
             read_only=app[CONFIG].safety.read_only)
    yield
    await workers.stop(grace=settings.lease_seconds)
    await store.close()
