"""OAuth 2.0 token introspection (RFC 7662): the authorization server says whether a token is
active, instead of the proxy checking a JWT itself (opaque tokens, immediate revocation).

The proxy authenticates to the endpoint with HTTP Basic (client_secret_basic); the secret is read
at each call, so a rotated secret file is picked up without a restart.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from purgeproxy.config import Introspection
from purgeproxy.security.errors import Denied, invalid_token

LEEWAY_SECONDS = 30


class Introspector:
    def __init__(self, settings: Introspection, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    async def verify(self, token: str) -> dict[str, Any]:
        """The introspection answer for an active token meant for us, or ``Denied``."""
        answer = await self._ask(token)
        if answer.get("active") is not True:
            raise invalid_token("the token is not active")
        exp = answer.get("exp")
        if isinstance(exp, (int, float)) and exp < time.time() - LEEWAY_SECONDS:
            raise invalid_token("the token has expired")
        if self.settings.issuer and answer.get("iss") != self.settings.issuer:
            raise invalid_token("the token was issued by another issuer")
        if self.settings.audience and self.settings.audience not in _audiences(answer):
            raise invalid_token("the token is meant for another audience")
        return answer

    async def _ask(self, token: str) -> dict[str, Any]:
        secret = self.settings.client_secret.value()
        try:
            response = await self.http.post(
                self.settings.url, data={"token": token, "token_type_hint": "access_token"},
                auth=(self.settings.client_id, secret), headers={"Accept": "application/json"},
            )
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise Denied(503, "the token introspection endpoint did not give a usable answer", code="transient")
        return body


def _audiences(answer: dict[str, Any]) -> list[str]:
    aud = answer.get("aud")
    return [aud] if isinstance(aud, str) else [a for a in aud or [] if isinstance(a, str)]
