"""The receipts' signing keys: one private key signs, every public key ever used verifies.

The signing key comes from ``receipts.signing_key`` (a PEM: EC P-256 signs ES256, Ed25519 signs
EdDSA). Without one, a P-256 key is generated at first start and kept in the job store, so that
every replica sharing the store signs with the same key and a restart does not orphan old
receipts. Rotation is by ``kid``: a new configured key signs from then on, and the earlier keys'
public halves (``receipts.verify_keys``, and every key ever generated into the store) stay in the
JWKS served at ``[base]/$receipt-keys``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyProblem(Exception):
    """The configured signing key cannot sign receipts (one line, for the operator)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str  # "ES256" | "EdDSA"
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private, self.kid, self.algorithm)


def algorithm_of(private: Any) -> str:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        return "ES256"
    raise KeyProblem("receipts.signing_key must be an EC P-256 or an Ed25519 private key")


def _bare_jwk(private: PrivateKey) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return dict(json.loads(OKPAlgorithm.to_jwk(public)))
    return dict(json.loads(ECAlgorithm.to_jwk(public)))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(private: PrivateKey, kid: str, algorithm: str) -> dict[str, Any]:
    jwk = _bare_jwk(private)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


def load_pem(pem: str, kid: str | None = None) -> SigningKey:
    """A configured PEM private key; its kid is ``kid`` or its thumbprint."""
    try:
        private = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise KeyProblem("receipts.signing_key is not an unencrypted PEM private key") from None
    algorithm = algorithm_of(private)
    assert isinstance(private, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return SigningKey(kid or thumbprint(_bare_jwk(private)), algorithm, private)


def generate() -> tuple[SigningKey, str]:
    """A new P-256 key and its PEM (PKCS#8), to be kept in the job store."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return SigningKey(thumbprint(_bare_jwk(private)), "ES256", private), pem


def jwks(keys: list[dict[str, Any]]) -> dict[str, Any]:
    """A JWKS of public keys, each kid once (the first wins)."""
    seen: dict[str, dict[str, Any]] = {}
    for key in keys:
        public = {name: value for name, value in key.items() if name != "d"}  # never a private part
        seen.setdefault(str(public.get("kid")), public)
    return {"keys": list(seen.values())}
