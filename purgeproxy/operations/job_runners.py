"""The job machinery's life in the app: open the store, start the workers, stop them cleanly.

Registered after the upstream clients, so it is torn down before them: on shutdown the workers
stop claiming, let the batch in flight finish and checkpoint, and give their leases back while
the upstream client still works. New asynchronous operations add their runner to ``runners``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from purgeproxy.app_keys import CONFIG, JOB_STORE, JOB_WORKERS
from purgeproxy.jobs.store import open_store
from purgeproxy.jobs.worker import Runner, WorkerPool, WorkerSettings
from purgeproxy.logs import get_logger
from purgeproxy.operations import purge_job

log = get_logger("purgeproxy.jobs")


def runners(app: web.Application) -> dict[str, Runner]:
    return {"$purge": partial(purge_job.run, app)}


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].jobs
    store = app[JOB_STORE] = open_store(settings.store)
    await store.open()
    workers = app[JOB_WORKERS] = WorkerPool(store, runners(app), WorkerSettings(
        settings.workers, settings.lease_seconds, settings.poll_seconds, settings.max_attempts))
    workers.start()
    log.info("jobs_started", workers=settings.workers, backend=type(store).__name__, name=workers.name)
    yield
    await workers.stop(grace=settings.lease_seconds)
    await store.close()
