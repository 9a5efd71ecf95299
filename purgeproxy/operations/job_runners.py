"""The job machinery's life in the app: open the store, start the workers, stop them cleanly.

Registered after the upstream clients, so it is torn down before them: on shutdown the workers
stop claiming, let the batch in flight finish and checkpoint, and give their leases back while
the upstream client still works. The runners are the declared operations' ``job_runner``s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from purgeproxy.app_keys import CONFIG, JOB_STORE, JOB_WORKERS
from purgeproxy.config import Config
from purgeproxy.jobs.backends import connect
from purgeproxy.jobs.worker import WorkerPool, WorkerSettings
from purgeproxy.logs import get_logger
from purgeproxy.operations import OPERATIONS
from purgeproxy.operations.unit import job_runners
from purgeproxy.receipts.routes import REAPPLY
from purgeproxy.receipts.routes import run_job as reapply_job

log = get_logger("purgeproxy.jobs")


def worker_count(config: Config) -> int:
    """A read-only process runs no job at all, whoever queued it: with a shared store another
    replica may have queued it, and read-only means nothing destructive happens here."""
    return 0 if config.safety.read_only else config.jobs.workers


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].jobs
    store = app[JOB_STORE] = await connect(settings.store)
    size = worker_count(app[CONFIG])
    runners = job_runners(app, OPERATIONS) | {REAPPLY: partial(reapply_job, app)}
    workers = app[JOB_WORKERS] = WorkerPool(store, runners, WorkerSettings(
        size, settings.lease_seconds, settings.poll_seconds, settings.max_attempts,
        retention_seconds=settings.retention_days * 86400.0))
    workers.start()
    log.info("jobs_started", workers=size, backend=type(store).__name__, name=workers.name,
             read_only=app[CONFIG].safety.read_only)
    yield
    await workers.stop(grace=settings.lease_seconds)
    await store.close()
