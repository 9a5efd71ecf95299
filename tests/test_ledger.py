"""The erasure ledger and the receipts' keys on both job stores (SQLite, PostgreSQL): the hash
chain holds under concurrent appends, tampering and removal are detected, retention keeps the
chain verifiable, keys survive restarts and rotate by kid."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from purgeproxy.engine.result import Result
from purgeproxy.operations.params import BadRequest, parse_purge
from purgeproxy.receipts.receipt import covers, verify
from purgeproxy.receipts.service import ReceiptService, open_service
from tests.helpers import config_for


@pytest.fixture(params=["sqlite", "postgresql"])
async def location(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.sqlite3")
        return
    server = request.getfixturevalue("postgres_url")
    name = "t" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield server.rsplit("/", 1)[0] + "/" + name


def result(patient: str, observations: int) -> Result:
    done = Result("$purge", f"Patient/{patient}", dry_run=False)
    done.deletion.deleted = [("Observation", f"{patient}-{i}") for i in range(observations)] + [("Patient", patient)]
    done.redo = {"operation": "$purge", "target": done.target, "compartment": {"Observation": ["subject"]}}
    return done


async def service(location: str, **receipts: Any) -> ReceiptService:
    return await open_service(config_for("http://upstream.invalid/fhir", jobs={"store": location},
                                         receipts=receipts))


async def test_chain_holds_under_concurrent_appends_and_detects_tampering(location: str) -> None:
    receipts = await service(location)
    try:
        issued = await asyncio.gather(*(receipts.issue(result(f"p{n}", n), "dpo", "Art. 17", "success")
                                        for n in range(1, 6)))
        found = await receipts.ledger.verify(receipts.jwks())
        assert found.intact and found.entries == 5, found.problems
        claims = verify(issued[2].token, receipts.jwks())
        assert covers(claims, "Observation/p3-0", issued[2].salt) and claims["manifest"]["count"] == 4
        entry = await receipts.ledger.entry(issued[2].id)
        assert entry is not None and entry.redo == result("p3", 3).redo and entry.salt == issued[2].salt

        seq = entry.seq
        await receipts.store.fetch(f"UPDATE purgeproxy_ledger SET operation = '$erase' WHERE seq = {seq}", {})
        found = await receipts.ledger.verify(receipts.jwks())
        assert found.problems == [f"entry {seq} (receipt {entry.receipt_id}) was altered: its content does "
                                  "not match its hash"]
        await receipts.store.fetch(f"UPDATE purgeproxy_ledger SET operation = '$purge' WHERE seq = {seq}", {})
        head = (await receipts.ledger.verify(receipts.jwks())).head
        assert head is not None and head[0] == 5
        await receipts.store.fetch("DELETE FROM purgeproxy_ledger WHERE seq = 3", {})
        found = await receipts.ledger.verify(receipts.jwks())
        assert not found.intact and "entries 3 to 3 are missing" in found.problems[0]
        # the newest entries removed: only a head kept elsewhere shows it
        await receipts.store.fetch("DELETE FROM purgeproxy_ledger WHERE seq >= 3", {})
        assert (await receipts.ledger.verify(receipts.jwks())).intact
        found = await receipts.ledger.verify(receipts.jwks(), expect_head=head)
        assert found.problems == [f"entry {head[0]} with hash {head[1]} is missing or altered: "
                                  "entries were removed from the end of the ledger"]
    finally:
        await receipts.close()


async def test_the_generated_key_survives_a_restart_and_retention_keeps_the_chain(location: str) -> None:
    first = await service(location)
    kid = first.signer.kid
    for n in range(3):
        await first.issue(result(f"r{n}", 1), "dpo", None, "success")
    await first.close()

    again = await service(location)  # a restart (or another replica): the same key signs
    try:
        assert again.signer.kid == kid and [key["kid"] for key in again.jwks()["keys"]] == [kid]
        later = datetime.now(UTC) + timedelta(days=10)
        assert await again.ledger.prune(1, now=later) == 2  # the newest entry always stays
        await again.issue(result("r3", 1), "dpo", None, "success")
        found = await again.ledger.verify(again.jwks())
        assert found.intact and found.entries == 2 and found.starts_after == 2, found.problems
        await again.store.fetch("DELETE FROM purgeproxy_ledger WHERE seq = 3", {})
        assert not (await again.ledger.verify(again.jwks())).intact  # removal after the anchor shows
    finally:
        await again.close()


async def test_a_configured_key_signs_and_rotation_keeps_old_receipts_verifiable(
        location: str, tmp_path: Path) -> None:
    old = await service(location)
    before = await old.issue(result("k0", 1), "dpo", None, "success")
    old_public = old.signer.public_jwk()
    await old.close()

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "receipt-key.pem").write_bytes(pem)
    rotated = await service(location, signing_key={"file": str(tmp_path / "receipt-key.pem")},
                            key_id="2026-11", verify_keys=[old_public])
    try:
        after = await rotated.issue(result("k1", 1), "dpo", None, "success")
        jwks = rotated.jwks()
        assert [key["kid"] for key in jwks["keys"]][0] == "2026-11"
        assert verify(after.token, jwks)["jti"] == after.id
        assert verify(before.token, jwks)["jti"] == before.id  # signed by the old key: still verifies
        assert (await rotated.ledger.verify(jwks)).intact
    finally:
        await rotated.close()


@pytest.mark.parametrize("query", [{"reason": ""}, {"reason": "x" * 1001}])
def test_a_reason_is_short_non_empty_text(query: dict[str, str]) -> None:
    from multidict import MultiDict

    with pytest.raises(BadRequest):
        parse_purge(MultiDict(query), b"", "")


def test_a_reason_may_come_in_the_query_or_the_body() -> None:
    from multidict import MultiDict

    body = b'{"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Art. 17"}]}'
    assert parse_purge(MultiDict({"reason": "Art. 17", "dryRun": "true"}), b"", "").reason == "Art. 17"
    assert parse_purge(MultiDict(), body, "application/fhir+json").reason == "Art. 17"
    with pytest.raises(BadRequest):
        parse_purge(MultiDict({"reason": "other"}), body, "application/fhir+json")
