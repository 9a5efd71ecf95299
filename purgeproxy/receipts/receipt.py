"""An erasure receipt: what one destructive operation deleted and kept, signed as a compact JWS.

The receipt names no resource in clear: the target, the deleted resources (the manifest) and the
kept ones are salted SHA-256 digests of ``Type/id``. Whoever holds a ``Type/id`` and the salt
(given to the requester with the receipt, and kept in the ledger) can show that it was covered;
whoever holds only the receipt learns counts and reasons, not whose data it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt

from purgeproxy.engine.report import RECEIPT_EXTENSION
from purgeproxy.engine.result import Result
from purgeproxy.fhir.references import Key
from purgeproxy.receipts.keys import SigningKey

ISSUER = "purgeproxy"
TYPE = "purgeproxy-erasure-receipt+jwt"
DIGEST = "sha256(salt || 'Type/id'), hex"
ALGORITHMS = ["ES256", "EdDSA"]
_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})\b")


def new_salt() -> str:
    return secrets.token_hex(16)


def digest(salt: str, key: Key | str) -> str:
    """The salted digest of ``Type/id``: the only way a receipt names a resource."""
    text = key if isinstance(key, str) else f"{key[0]}/{key[1]}"
    return hashlib.sha256((salt + text).encode()).hexdigest()


def token_digest(token: str) -> str:
    """What an AuditEvent or a ledger entry cites a receipt by."""
    return hashlib.sha256(token.encode()).hexdigest()


def manifest_of(result: Result) -> list[Key]:
    """The resources this operation deleted (and earlier-deleted ones whose history it removed)."""
    keys = list(result.deletion.deleted)
    if result.purge is not None:
        keys += [k for k in result.purge.earlier_deleted.hard_deleted if k not in keys]
    return keys


def deleted_something(result: Result) -> bool:
    return not result.dry_run and bool(manifest_of(result) or result.expunged)


def _hidden(text: str, salt: str) -> str:
    """A reason with every ``Type/id`` in it replaced by its digest: reasons name other resources."""
    return _REFERENCE.sub(lambda m: f"{m.group(1)}#{digest(salt, m.group(0))[:16]}", text)


def kept_of(result: Result, salt: str) -> list[dict[str, str]]:
    """What was reached but not deleted, and why, each resource as its digest."""
    kept: dict[Key, str] = {**result.kept, **result.deletion.changed}
    kept |= {k: f"blocked: {why}" for k, why in result.deletion.blocked.items()}
    kept |= {k: f"failed: {why}" for k, why in result.deletion.failed.items()}
    kept |= {k: "still present after the operation" for k in result.remaining}
    if result.purge is not None:
        plan, attachments = result.purge.plan, result.purge.attachments
        kept |= {k: "excluded type (purge.excluded_types)" for k in plan.excluded}
        kept |= {k: "shared with another patient's compartment" for k in plan.shared if k not in plan.order}
        kept |= {k: "another patient's own record" for k in plan.other_records}
        kept |= dict(attachments.kept.items())
    return [{"type": k[0], "resource": digest(salt, k), "why": _hidden(why, salt)}
            for k, why in sorted(kept.items())]


def public_upstream(url: str) -> str:
    """The upstream's URL without credentials it may carry."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def claims(result: Result, requester: str, reason: str | None, upstream: str, verdict: str,
           salt: str, now: datetime | None = None) -> dict[str, Any]:
    """The receipt's content (the JWS payload)."""
    moment = now or datetime.now(UTC)
    manifest = sorted(digest(salt, key) for key in manifest_of(result))
    return {
        "iss": ISSUER, "jti": uuid.uuid4().hex, "iat": int(moment.timestamp()),
        "time": moment.isoformat(timespec="seconds"),
        "operation": result.operation, "requester": requester, "reason": reason,
        "upstream": public_upstream(upstream), "verdict": verdict,
        "target": digest(salt, result.target),
        "counts": result.counts(), "versions_expunged": result.expunged,
        "history": result.hard_delete_method or "not removed by a hard delete",
        "kept": kept_of(result, salt),
        "manifest": {"digest": DIGEST, "count": len(manifest), "entries": manifest},
    }


def sign(payload: dict[str, Any], key: SigningKey) -> str:
    return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": TYPE})


class Invalid(Exception):
    """The receipt does not verify: bad signature, unknown key, not a receipt."""


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The receipt's claims, once its signature verifies against a key of ``jwks`` by kid."""
    try:
        header = jwt.get_unverified_header(token)
        keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    except (jwt.PyJWTError, ValueError, KeyError) as problem:
        raise Invalid(f"not a receipt or no usable keys: {problem}") from None
    key = keys.get(header.get("kid"))
    if key is None:
        raise Invalid(f"no key with kid {header.get('kid')!r} among the given keys")
    try:
        payload: dict[str, Any] = jwt.decode(token, key.key, algorithms=ALGORITHMS, issuer=ISSUER,
                                             options={"require": ["iss", "jti", "iat"]})
    except jwt.PyJWTError as problem:
        raise Invalid(f"the signature or content does not verify: {problem}") from None
    return payload


def covers(payload: dict[str, Any], reference: str, salt: str) -> bool:
    """Whether the receipt's manifest holds ``Type/id`` (with the salt it was made with)."""
    return digest(salt, reference) in set(payload.get("manifest", {}).get("entries", []))


def find_token(text: str) -> str:
    """The compact JWS in a file: as it is, or inside an operation's JSON answer."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return stripped
    return next(iter(_tokens_in(json.loads(stripped))), "")


def _tokens_in(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if value.get("url") == RECEIPT_EXTENSION or value.get("name") == "receipt":
            if isinstance(value.get("valueString"), str):
                yield value["valueString"]
        for inner in value.values():
            yield from _tokens_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _tokens_in(inner)
