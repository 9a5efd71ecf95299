"""Static bearer tokens: compared by SHA-256 digest in constant time.

Hashes rather than tokens in the config file, so that the file (often in git or a ConfigMap) is
not itself a credential. Tokens given through an environment variable or file are hashed at each
use, so a rotated secret file takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from purgeproxy.config import Auth, SecretSource

ALL = "*"


@dataclass(frozen=True)
class StaticToken:
    name: str
    digest: Callable[[], bytes]
    operations: frozenset[str]

    def allows(self, operation: str) -> bool:
        return ALL in self.operations or operation in self.operations


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _from_source(source: SecretSource) -> Callable[[], bytes]:
    return lambda: _hash(source.value())


def static_tokens(settings: Auth) -> list[StaticToken]:
    tokens = []
    admin = settings.admin_token.get_secret_value()
    if admin:
        tokens.append(StaticToken("operator (admin token)", lambda: _hash(admin), frozenset({ALL})))
    for entry in settings.tokens:
        digest = (lambda fixed=bytes.fromhex(entry.sha256): fixed) if entry.sha256 else _from_source(entry.token)  # type: ignore[arg-type]
        tokens.append(StaticToken(entry.name, digest, frozenset(entry.operations)))
    return tokens


def match(tokens: list[StaticToken], presented: str) -> StaticToken | None:
    """The configured token equal to ``presented``; every entry is compared, in constant time."""
    digest = _hash(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, token.digest()) and found is None:
            found = token
    return found
