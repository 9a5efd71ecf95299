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
from purgeproxy.config import StaticToken as TokenEntry

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
        tokens.append(StaticToken(entry.name, _digest_of(entry), frozenset(entry.operations)))
    return tokens


def _digest_of(entry: TokenEntry) -> Callable[[], bytes]:
    """A hash given in the config is fixed; a token from env or file is read when compared."""
    if entry.sha256:
        fixed = bytes.fromhex(entry.sha256)
        return lambda: fixed
    assert entry.token is not None, "the config requires sha256 or token"
    return _from_source(entry.token)


def match(tokens: list[StaticToken], presented: str) -> StaticToken | None:
    """The configured token equal to ``presented``; every entry is compared, in constant time."""
    digest = _hash(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, token.digest()) and found is None:
            found = token
    return found
