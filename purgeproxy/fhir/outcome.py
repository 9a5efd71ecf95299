"""OperationOutcome builders: every answer the proxy makes up itself is one of these."""

from __future__ import annotations

from typing import Any

FHIR_JSON = "application/fhir+json"


class OutcomeError(Exception):
    """A failure the proxy answers with one OperationOutcome: an HTTP status, an issue code, a text."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def issue(severity: str, code: str, text: str, **extra: Any) -> dict[str, Any]:
    """One OperationOutcome issue; ``extra`` carries fields such as ``expression``."""
    return {"severity": severity, "code": code, "diagnostics": text, **extra}


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def error(code: str, text: str, **extra: Any) -> dict[str, Any]:
    """The common case: a single error issue."""
    return outcome(issue("error", code, text, **extra))


UPSTREAM_TIMEOUT = "the upstream FHIR server did not answer in time"
UPSTREAM_UNREACHABLE = "the upstream FHIR server cannot be reached"
UPSTREAM_MALFORMED = "the upstream FHIR server gave a malformed answer"
