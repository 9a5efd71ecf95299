"""The audit trail of destructive operations: always a structured log line, optionally an
AuditEvent on the upstream.

The AuditEvent names the patient by identifier, not by reference: a reference to a purged
Patient would dangle, and on servers with referential integrity it would block the purge itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from purgeproxy.logs import get_logger

log = get_logger("purgeproxy.audit")

PATIENT_ID_SYSTEM = "urn:purgeproxy:purged-patient-id"


def record(operation: str, patient_id: str, caller: str, outcome: str, counts: dict[str, int],
           dry_run: bool) -> None:
    log.info("audit", operation=operation, patient_id=patient_id, caller=caller,
             outcome=outcome, counts=counts, dry_run=dry_run)


def audit_event(operation: str, patient_id: str, caller: str, success: bool,
                counts: dict[str, int]) -> dict[str, Any]:
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
            {"what": {"identifier": {"system": PATIENT_ID_SYSTEM, "value": patient_id}},
             "detail": [{"type": rtype, "valueString": str(count)}
                        for rtype, count in counts.items()]}
        ],
    }
