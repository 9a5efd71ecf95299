"""Typed application keys: what the app holds, shared by the wiring and the handlers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.config import Config
from purgeproxy.fhir.client import FhirClient
from purgeproxy.jobs.store import JobStore
from purgeproxy.jobs.worker import WorkerPool
from purgeproxy.passthrough import Passthrough
from purgeproxy.receipts.service import ReceiptService
from purgeproxy.security.authorizer import Authorizer
from purgeproxy.security.limits import CallerLimits
from purgeproxy.servers.profile import ProfileCache
from purgeproxy.upstream_pipe import UpstreamPipe

CONFIG = web.AppKey("config", Config)
PASSTHROUGH_PIPE = web.AppKey("passthrough_pipe", UpstreamPipe)
PASSTHROUGH = web.AppKey("passthrough", Passthrough)
FHIR_CLIENT = web.AppKey("fhir_client", FhirClient)
OPERATIONS = web.AppKey("operations", list[AdvertisedOperation])
PROFILE = web.AppKey("upstream_profile", ProfileCache)
UPSTREAM_LIMIT = web.AppKey("upstream_limit", asyncio.Semaphore)  # shared by every operation
HARD_DELETE_LIMIT = web.AppKey("hard_delete_limit", asyncio.Semaphore)  # every purge's instance hard deletes
JOB_STORE = web.AppKey("job_store", JobStore)
JOB_WORKERS = web.AppKey("job_workers", WorkerPool)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
CALLER_LIMITS = web.AppKey("caller_limits", CallerLimits)  # destructive operations per caller
RECEIPTS = web.AppKey("receipts", ReceiptService)  # absent when receipts.enabled is false
