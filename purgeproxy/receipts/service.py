"""The receipts as the proxy holds them: the signing key, every verifying key and the ledger, on a
connection of their own to the job store (so that they are ready before any job runs)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from purgeproxy.config import Config
from purgeproxy.engine.result import ReceiptRef, Result
from purgeproxy.jobs.backends import connect
from purgeproxy.jobs.sql import SqlJobStore
from purgeproxy.receipts import keys, sql
from purgeproxy.receipts.ledger import Ledger, timestamp
from purgeproxy.receipts.receipt import claims, new_salt, sign, token_digest


@dataclass
class ReceiptService:
    config: Config
    store: SqlJobStore
    ledger: Ledger
    signer: keys.SigningKey
    public_keys: list[dict[str, Any]]  # every key that verifies, the signer's first

    def jwks(self) -> dict[str, Any]:
        return keys.jwks(self.public_keys)

    async def issue(self, result: Result, requester: str, reason: str | None, verdict: str) -> ReceiptRef:
        """Sign the result's receipt and chain its manifest into the ledger."""
        salt = new_salt()
        # a 100,000-resource manifest takes seconds to hash, encode and sign: not on the event loop
        payload = await asyncio.to_thread(claims, result, requester, reason, self.config.upstream.url, verdict, salt)
        token = await asyncio.to_thread(sign, payload, self.signer)
        await self.ledger.append(payload["jti"], result.operation, result.redo, salt,
                                 payload["manifest"]["entries"], token)
        await self.ledger.prune(self.config.receipts.retention_days)  # nothing to do without one
        return ReceiptRef(payload["jti"], token, salt, token_digest(token))

    async def close(self) -> None:
        await self.store.close()


async def open_service(config: Config) -> ReceiptService:
    """Open the store, create the ledger's tables, load or generate the signing key, apply the
    retention."""
    store = await connect(config.jobs.store)
    if not isinstance(store, SqlJobStore):
        raise TypeError("receipts need an SQL job store")
    ledger = Ledger(store)
    await ledger.open()
    stored = await _stored_keys(store)
    configured = config.receipts.signing_key
    if configured is not None:
        signer = keys.load_pem(configured.value(), config.receipts.key_id)
    else:
        if not stored:
            generated, pem = keys.generate()
            await store.fetch(sql.ADD_KEY, {"kid": generated.kid, "private_pem": pem,
                                            "created_at": timestamp(datetime.now(UTC))})
            stored = await _stored_keys(store)
        signer = stored[0]  # the oldest: replicas that generated at once agree on it
    public = [signer.public_jwk(), *config.receipts.verify_keys, *(key.public_jwk() for key in stored)]
    await ledger.prune(config.receipts.retention_days)
    return ReceiptService(config, store, ledger, signer, public)


async def _stored_keys(store: SqlJobStore) -> list[keys.SigningKey]:
    return [keys.load_pem(row["private_pem"], row["kid"]) for row in await store.fetch(sql.STORED_KEYS, {})]
