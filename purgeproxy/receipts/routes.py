"""The receipts' HTTP side: the public keys, one receipt by id, and ``$reapply`` as a job.

* ``GET [base]/$receipt-keys``: the JWKS every receipt verifies against (public keys only).
* ``GET [base]/$receipt/<id>``: the receipt, authorized like the job status endpoint (the caller
  may run the receipt's operation; a refusal comes before any 404, so ids cannot be probed).
* ``POST [base]/$reapply?since=DATE``: re-apply every erasure recorded since ``since``, as an
  asynchronous job (``Prefer: respond-async`` is implied); the caller must be allowed every
  operation it re-runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from purgeproxy.app_keys import CONFIG, RECEIPTS
from purgeproxy.capabilities import AdvertisedOperation
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.jobs.store import COMPLETED, ERROR, Job
from purgeproxy.jobs.worker import Checkpoint, JobOutcome
from purgeproxy.operations.async_status import kick_off
from purgeproxy.operations.common import caller_of
from purgeproxy.operations.params import BadRequest
from purgeproxy.operations.vendor import operation_input
from purgeproxy.receipts.reapply import reapply, report_outcome
from purgeproxy.receipts.service import ReceiptService, open_service
from purgeproxy.render import render

REAPPLY = "$reapply"
# listed in ``metadata`` beside the destructive operations while receipts are on, so that an
# auditor's client finds where receipts and their keys are (the proxy's own definitions)
ADVERTISED = [AdvertisedOperation(name, f"urn:purgeproxy:OperationDefinition:{name}")
              for name in ("receipt", "receipt-keys", "reapply")]
REAPPLY_SPEC = {"since": "string", "dryRun": "boolean"}


async def receipts_context(app: web.Application) -> AsyncIterator[None]:
    """Open the ledger and the keys before any job runs; nothing when receipts are off."""
    if not app[CONFIG].receipts.enabled:
        yield
        return
    service = app[RECEIPTS] = await open_service(app[CONFIG])
    yield
    await service.close()


def _service(request: web.Request) -> ReceiptService:
    service = request.app.get(RECEIPTS)
    if service is None:
        raise OutcomeError(404, "not-supported", "erasure receipts are off (receipts.enabled)")
    return service


async def keys(request: web.Request) -> web.Response:
    return web.json_response(_service(request).jwks(), content_type="application/jwk-set+json")


async def receipt(request: web.Request) -> web.Response:
    entry = await _service(request).ledger.entry(request.match_info["receipt_id"])
    operation = entry.operation if entry else "$purge"
    target = (entry.redo or {}).get("target", "") if entry else ""
    patient = target.split("/", 1)[1] if operation == "$purge" and "/" in target else None
    await caller_of(request, operation, destructive=False, patient=patient)
    if entry is None:
        raise OutcomeError(404, "not-found", "no such receipt")
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "receipt", "valueString": entry.receipt},
        {"name": "receiptId", "valueString": entry.receipt_id},
        {"name": "receiptSalt", "valueString": entry.salt},
        {"name": "ledgerSeq", "valueInteger": entry.seq},
        {"name": "ledgerHash", "valueString": entry.entry_hash}]}
    return render(request, body)


def parse_since(text: str) -> datetime:
    """A FHIR date or dateTime; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(400, "invalid", "since must be a date or dateTime, e.g. 2026-01-31", "since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def kick_off_reapply(request: web.Request) -> web.StreamResponse:
    caller = await caller_of(request, "$purge")  # before anything is read: refusals cost nothing
    values = await operation_input(request, REAPPLY_SPEC)
    if "since" not in values:
        raise BadRequest(400, "required", "the since parameter (a date) is required", "since")
    since = parse_since(values["since"])
    entries = await _service(request).ledger.since(since)
    for operation in sorted({entry.operation for entry in entries} - {"$purge"}):
        await caller_of(request, operation)  # allowed every operation it would re-run
    dry_run = bool(values.get("dryRun"))
    payload = {"since": since.isoformat(), "dry_run": dry_run, "caller": caller.name}
    target = f"since {since.isoformat()}" + (" (dry run)" if dry_run else "")
    return await kick_off(request, REAPPLY, target, payload, f"Re-applying the erasures recorded {target}")


async def run_job(app: web.Application, job: Job, checkpoint: Checkpoint) -> JobOutcome:
    """The ``$reapply`` job: the same function ``purgeproxy reapply`` runs."""
    report = await reapply(app, datetime.fromisoformat(job.payload["since"]), job.payload["caller"],
                           bool(job.payload.get("dry_run")), checkpoint)
    return JobOutcome(COMPLETED if report.complete else ERROR, 200, report_outcome(report))


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_route("GET", f"{base}/$receipt-keys", keys)
    app.router.add_route("GET", f"{base}/$receipt/{{receipt_id}}", receipt)
    app.router.add_route("POST", f"{base}/$reapply", kick_off_reapply)
