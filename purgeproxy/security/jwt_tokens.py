"""JWT bearer tokens (SMART on FHIR backend services and user tokens), checked locally.

PyJWT does the cryptography and the claim checks; this module picks the key (configured JWKs or
the issuer's JWKS, fetched asynchronously and cached) and turns every failure into a ``Denied``
that says what was wrong without quoting the token. Only asymmetric algorithms from the
configured list are accepted, so ``alg: none`` and HS256-with-the-public-key tricks fail before
any key is touched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt

from purgeproxy.config import Jwt
from purgeproxy.security.errors import Denied, invalid_token

REFETCH_INTERVAL = 30.0  # seconds: an unknown kid triggers a refetch at most this often

_CLAIM_ERRORS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuerError, "the token was issued by another issuer"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim (exp, iss, aud)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
]


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class JwtVerifier:
    def __init__(self, settings: Jwt, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self._configured = _key_set(settings.keys)
        self._fetched: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once signature, issuer, audience and expiry check out."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_token("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise invalid_token(f"the token's algorithm is not accepted (allowed: {', '.join(self.settings.algorithms)})")
        key = await self._key(header.get("kid"))
        return self._decode(token, key, alg)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key.key, algorithms=[alg], audience=self.settings.audience,
                issuer=self.settings.issuer, leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            reason = next((text for kind, text in _CLAIM_ERRORS if isinstance(error, kind)), "the token is invalid")
            raise invalid_token(reason) from None

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        if self.settings.jwks_url:
            await self._refresh(stale_after=self.settings.jwks_cache_seconds)
        key = _pick(self._configured, kid) or _pick(self._fetched, kid)
        if key is None and self.settings.jwks_url:  # perhaps the issuer rotated its keys
            await self._refresh(stale_after=REFETCH_INTERVAL)
            key = _pick(self._fetched, kid)
        if key is None:
            raise invalid_token("the token's signing key is not known")
        return key

    async def _refresh(self, stale_after: float) -> None:
        """Fetch the JWKS unless the cached copy is younger than ``stale_after`` seconds."""
        async with self._lock:
            if time.monotonic() - self._fetched_at < stale_after:
                return
            self._fetched_at = time.monotonic()
            try:
                answer = await self.http.get(self.settings.jwks_url or "", headers={"Accept": "application/json"})
                answer.raise_for_status()
                self._fetched = _key_set(answer.json().get("keys", []))
            except (httpx.HTTPError, ValueError, RecursionError, AttributeError):
                raise Denied(503, "the token issuer's keys (jwks_url) cannot be fetched", code="transient") from None


def _key_set(keys: list[dict[str, Any]]) -> dict[str | None, jwt.PyJWK]:
    """Usable public keys by kid; keys PyJWT cannot use (or private parts) are skipped."""
    found: dict[str | None, jwt.PyJWK] = {}
    for data in keys:
        if not isinstance(data, dict) or "d" in data or data.get("use", "sig") != "sig":
            continue
        try:
            found[data.get("kid")] = jwt.PyJWK(data)
        except jwt.PyJWTError:
            continue
    return found


def _pick(keys: dict[str | None, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None
