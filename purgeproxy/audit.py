"""The audit trail of destructive operations: always a structured log line, optionally an
AuditEvent on the upstream. One call, :func:`audit_result`, for the purge and every other
destructive operation.

The AuditEvent names the patient (or the operation's target) by identifier, not by reference: a
reference to a purged Patient would dangle, and on servers with referential integrity it would
block the purge itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from purgeproxy import metrics
from purgeproxy.engine.result import Result
from purgeproxy.fhir.client import FhirClient, UpstreamError
from purgeproxy.logs import get_logger

log = get_logger("purgeproxy.audit")

PATIENT_ID_SYSTEM = "urn:purgeproxy:purged-patient-id"
TARGET_SYSTEM = "urn:purgeproxy:erased-target"  # the other operations' target, e.g. Observation/1
RECEIPT_SYSTEM = "urn:purgeproxy:erasure-receipt"  # the signed receipt's id (purgeproxy.receipts)


async def audit_result(result: Result, caller: str, client: FhirClient, limit: asyncio.Semaphore,
                       write_event: bool) -> None:
    """Log what ``result`` says was done and, with ``write_event`` (``purge.audit_event``) and not
    a dry run, write an AuditEvent; a failure to write it joins the result's errors, so that the
    report of what was deleted is not lost with it."""
    subject = result.purge.patient_id if result.purge is not None else result.target
    counts = result.counts()
    state = "dry-run" if result.dry_run else ("success" if result.complete else "incomplete")
    record(result.operation, subject, caller, state, counts, result.dry_run)
    metrics.record_result(result)
    if not write_event or result.dry_run:
        return
    system = PATIENT_ID_SYSTEM if result.purge is not None else TARGET_SYSTEM
    event = audit_event(result.operation, subject, caller, result.complete, counts, system)
    if result.receipt is not None:  # the receipt by id and digest, never its list of resources
        event["entity"].append({"what": {"identifier": {"system": RECEIPT_SYSTEM, "value": result.receipt.id}},
                                "detail": [{"type": "receipt-sha256", "valueString": result.receipt.digest}]})
    try:
        async with limit:
            await client.request("POST", "AuditEvent", json=event)
    except UpstreamError as failure:
        result.errors.append(f"the AuditEvent could not be written: {failure.text}")


@dataclass
class Attempt:
    """A destructive request as far as its handler got: the operation, its patient (a purge) and,
    once authorized, the caller. Kept on the request so that a refusal can be audited."""

    operation: str
    patient_id: str | None = None
    caller: str | None = None


def refused(attempt: Attempt, status: int, code: str) -> None:
    """A destructive request refused (401, 403, 422, 429): audited like one that ran, with the
    refusal's status and code (never its text, which may name what the caller sent)."""
    log.info("audit", operation=attempt.operation, patient_id=attempt.patient_id, caller=attempt.caller,
             outcome="refused", status=status, code=code)
    metrics.record_refusal(attempt.operation)


def record(operation: str, patient_id: str, caller: str, outcome: str, counts: dict[str, int],
           dry_run: bool) -> None:
    log.info("audit", operation=operation, patient_id=patient_id, caller=caller,
             outcome=outcome, counts=counts, dry_run=dry_run)


def audit_event(operation: str, patient_id: str, caller: str, success: bool,
                counts: dict[str, int], system: str = PATIENT_ID_SYSTEM) -> dict[str, Any]:
    """An R4 AuditEvent: action E (execute), subtype the operation, counts per type."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": operation,
                     "display": operation}],
        "action": "E",
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "outcome": "0" if success else "4",
        "agent": [{"who": {"display": caller}, "requestor": True}],
        "source": {"observer": {"display": "purgeproxy"}},
        "entity": [
            {"what": {"identifier": {"system": system, "value": patient_id}},
             "detail": [{"type": rtype, "valueString": str(count)}
                        for rtype, count in counts.items()]}
        ],
    }
