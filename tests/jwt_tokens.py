"""Signed JWTs, the issuer's keys and the auth policies the auth tests configure."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import log_capture

ISSUER = "https://issuer.test"
AUDIENCE = "https://proxy.test/fhir"
BASIC = "Basic " + base64.b64encode(b"proxy:introspection-secret").decode()


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY, OTHER_KEY = _rsa(), _rsa()


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def token(key: rsa.RSAPrivateKey = SIGNING_KEY, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-42", "exp": now + 300, "iat": now,
            "scope": "system/Patient.$purge", **claims}
    signed = jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})
    log_capture.register_secret(signed)
    return signed


def unsigned(**claims: Any) -> str:
    """``alg: none``, made by hand: PyJWT refuses to verify it, as it should."""
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-42", "exp": now + 300, "scope": "system/Patient.$purge", **claims}
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{part(body)}."


def jwt_policy(issuer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": f"{issuer['url']}/jwks.json", **extra}}


async def purge(proxy: str, bearer: str | None, query: str = "?dryRun=true") -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with httpx.AsyncClient() as http:
        return await http.post(f"{proxy}/Patient/p1/$purge{query}", headers=headers)


def introspection_policy(issuer: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TEST_INTROSPECTION_SECRET", "introspection-secret")
    log_capture.register_secret("introspection-secret")
    return {"introspection": {"url": f"{issuer['url']}/introspect", "client_id": "proxy",
                              "client_secret": {"env": "TEST_INTROSPECTION_SECRET"}, "audience": AUDIENCE}}
