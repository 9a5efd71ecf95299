"""OperationOutcome builders: every answer the proxy makes up itself is one of these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FHIR_JSON = "application/fhir+json"


class OutcomeError(Exception):
    """Every refusal and upstream failure: what the proxy answers with one OperationOutcome.

    Raised anywhere (handlers, engine, auth); turned into a response in one place, the error
    middleware (``purgeproxy.errors``), and into a stored result by the job worker, both through
    :meth:`document`. ``headers`` go on the HTTP answer (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(self, status: int, code: str, text: str, expression: str | Sequence[str] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text
        self.expression = [expression] if isinstance(expression, str) else list(expression or [])
        self.headers = dict(headers or {})

    def document(self) -> dict[str, Any]:
        """The OperationOutcome this failure is answered with."""
        extra = {"expression": self.expression} if self.expression else {}
        return error(self.code, self.text, **extra)


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
