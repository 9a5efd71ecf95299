"""Refusals of the authorization layer, shaped for an OperationOutcome and RFC 6750 headers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Denied(Exception):
    status: int  # 401 no or bad credentials; 403 not allowed; 429 too many; 503 issuer unreachable
    text: str  # never quotes the token
    code: str = "forbidden"  # OperationOutcome issue code
    challenge: str | None = None  # RFC 6750 error: invalid_token, insufficient_scope
    retry_after: int | None = None


def invalid_token(text: str) -> Denied:
    return Denied(401, text, code="login", challenge="invalid_token")
