"""Who may run destructive operations, and which ones.

Default deny: without a configured policy every destructive operation is refused (403), though the
proxy starts and passes other traffic through. A caller is recognised by one of

* a static bearer token (``auth.admin_token``, or ``auth.tokens`` by SHA-256 hash or from the
  environment / a file), each allowed a list of operations;
* a JWT checked locally against the issuer's keys (``auth.jwt``), or any token checked by RFC 7662
  introspection (``auth.introspection``); both need one of the operation's scopes.

Operations are plain names (``$purge``, ``$erase``…), so new ones plug in by name. Tokens are
never logged nor put in an answer; the audit log gets ``Caller.name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from purgeproxy.config import Auth
from purgeproxy.security.errors import Denied
from purgeproxy.security.introspection import Introspector
from purgeproxy.security.jwt_tokens import JwtVerifier, looks_like_jwt
from purgeproxy.security.scopes import identity, own_patient, required_scopes, scopes_of
from purgeproxy.security.static_tokens import match, static_tokens

NO_POLICY = ("destructive operations are disabled: no operator token or other authorization "
             "policy is configured")


@dataclass(frozen=True)
class Caller:
    """Who asked, as written to the audit log (never the token itself)."""

    name: str


class Authorizer:
    def __init__(self, settings: Auth, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.static = static_tokens(settings)
        self.jwt = JwtVerifier(settings.jwt, http) if settings.jwt else None
        self.introspection = Introspector(settings.introspection, http) if settings.introspection else None

    @property
    def configured(self) -> bool:
        return bool(self.static or self.jwt or self.introspection)

    async def authorize(self, authorization: str | None, operation: str,
                        patient: str | None = None) -> Caller:
        """The caller allowed to run ``operation`` (on ``patient``'s compartment, when the
        operation is one patient's), or ``Denied`` (401, 403 or 503)."""
        if self.settings.insecure_allow_all:
            return Caller("anonymous (auth.insecure_allow_all)")
        if not self.configured:
            raise Denied(403, NO_POLICY)
        token = _bearer(authorization)
        static = match(self.static, token)
        if static is not None:
            if not static.allows(operation):
                raise Denied(403, f"this token may not run {operation}")
            return Caller(static.name)
        kind, claims = await self._claims(token)
        needed = required_scopes(operation, self.settings.scopes)
        held = scopes_of(claims).intersection(needed)
        if not held:
            raise Denied(403, f"the token lacks a scope for {operation} (one of: {' '.join(needed)})",
                         challenge="insufficient_scope")
        if not own_patient(claims, held, patient):
            raise Denied(403, f"the token's patient/ scope allows {operation} on its own patient "
                              "only (its 'patient' claim)", challenge="insufficient_scope")
        return Caller(identity(claims, kind))

    async def _claims(self, token: str) -> tuple[str, dict[str, Any]]:
        if self.jwt is not None and looks_like_jwt(token):
            return "jwt", await self.jwt.verify(token)
        if self.introspection is not None:
            return "introspected", await self.introspection.verify(token)
        raise Denied(403, "this token may not run destructive operations")


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, "a bearer token is required for destructive operations", code="login")
    return token.strip()
