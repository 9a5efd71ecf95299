"""Who may run destructive operations.

For now one operators' bearer token from config (``auth.admin_token``, usually from the
environment). No token configured means destructive operations are refused, never allowed.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Denied(Exception):
    status: int  # 401: no credentials; 403: credentials that do not allow this
    text: str


@dataclass(frozen=True)
class Caller:
    """Who asked, as written to the audit log (never the token itself)."""

    name: str


def authorize(authorization: str | None, admin_token: str) -> Caller:
    """The caller behind an ``Authorization`` header, or ``Denied``."""
    if not admin_token:
        raise Denied(403, "destructive operations are disabled: no operator token is configured")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, "a bearer token is required for destructive operations")
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        raise Denied(403, "this token may not run destructive operations")
    return Caller("operator (admin token)")
