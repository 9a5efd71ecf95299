"""The erasure ledger: every receipt's manifest, append-only, hash-chained, in the job store.

Each entry's hash covers the previous entry's hash and the entry's own fields (the receipt's
digest among them), so that altering an entry, removing one or reordering them breaks the chain
at that point, and ``purgeproxy ledger verify`` names where. Retention (``receipts.retention_days``)
removes the oldest entries only, after recording the last removed entry's hash as the anchor the
remaining chain must start from.

An entry keeps only what re-applying the erasure needs (``redo``: operation, target id,
compartment definition or flags) next to the digests; no resource content, no other id in clear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from purgeproxy.jobs.sql import SqlJobStore
from purgeproxy.receipts import sql
from purgeproxy.receipts.receipt import Invalid, token_digest, verify

GENESIS = "0" * 64


def timestamp(moment: datetime) -> str:
    """The ledger's one time format: sorts as text, hashes the same everywhere."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    seq: int
    receipt_id: str
    recorded_at: str
    operation: str
    redo: dict[str, Any] | None
    salt: str
    manifest: list[str]
    receipt: str
    prev_hash: str
    entry_hash: str


def entry_hash(prev_hash: str, seq: int, receipt_id: str, recorded_at: str, operation: str,
               redo: dict[str, Any] | None, salt: str, manifest: list[str], receipt: str) -> str:
    content = json.dumps({"seq": seq, "receipt_id": receipt_id, "recorded_at": recorded_at,
                          "operation": operation, "redo": redo, "salt": salt, "manifest": manifest,
                          "receipt": token_digest(receipt)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _entry(row: Mapping[str, Any]) -> Entry:
    return Entry(int(row["seq"]), row["receipt_id"], row["recorded_at"], row["operation"],
                 json.loads(row["redo"]) if row["redo"] else None, row["salt"], json.loads(row["manifest"]),
                 row["receipt"], row["prev_hash"], row["entry_hash"])


@dataclass
class Verification:
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    starts_after: int = 0  # entries up to this seq were removed by retention
    head: tuple[int, str] | None = None  # the newest entry (seq, hash): keep it elsewhere

    @property
    def intact(self) -> bool:
        return not self.problems


class Ledger:
    """The ledger's statements on an open SQL job store (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlJobStore) -> None:
        self.store = store

    async def open(self) -> None:
        for statement in sql.SCHEMA:
            await self.store.fetch(statement, {})

    async def _rows(self, statement: str, **params: Any) -> Sequence[Mapping[str, Any]]:
        return await self.store.fetch(statement, params)

    async def append(self, receipt_id: str, operation: str, redo: dict[str, Any] | None, salt: str,
                     manifest: list[str], receipt: str) -> Entry:
        """Chain a new entry to the last one; a concurrent append makes this one retry."""
        for _ in range(20):
            last = await self._rows(sql.LAST)
            anchor = await self._rows(sql.ANCHOR_ROW)
            start = last or anchor
            seq, prev = (int(start[0]["seq"]) + 1, start[0]["entry_hash"]) if start else (1, GENESIS)
            recorded_at = timestamp(datetime.now(UTC))
            digest = entry_hash(prev, seq, receipt_id, recorded_at, operation, redo, salt, manifest, receipt)
            inserted = await self._rows(sql.APPEND, seq=seq, receipt_id=receipt_id, recorded_at=recorded_at,
                                        operation=operation, redo=json.dumps(redo) if redo else None, salt=salt,
                                        manifest=json.dumps(manifest), receipt=receipt, prev_hash=prev,
                                        entry_hash=digest)
            if inserted:
                return Entry(seq, receipt_id, recorded_at, operation, redo, salt, manifest, receipt, prev, digest)
        raise RuntimeError("could not append to the erasure ledger")

    async def since(self, moment: datetime) -> list[Entry]:
        return [_entry(row) for row in await self._rows(sql.SINCE, since=timestamp(moment))]

    async def entry(self, receipt_id: str) -> Entry | None:
        found = await self._rows(sql.BY_RECEIPT, receipt_id=receipt_id)
        return _entry(found[0]) if found else None

    async def prune(self, retention_days: int | None, now: datetime | None = None) -> int:
        """Remove entries older than ``retention_days`` before ``now`` (never the newest); returns
        the last removed seq (0: none)."""
        if retention_days is None:
            return 0
        cutoff = timestamp((now or datetime.now(UTC)) - timedelta(days=retention_days))
        expired = await self._rows(sql.LAST_EXPIRED, cutoff=cutoff)
        if not expired:
            return 0
        seq, digest = int(expired[0]["seq"]), expired[0]["entry_hash"]
        await self._rows(sql.SET_ANCHOR, seq=seq, entry_hash=digest, pruned_at=timestamp(datetime.now(UTC)))
        await self._rows(sql.PRUNE, seq=seq)
        return seq

    async def verify(self, jwks: dict[str, Any], expect_head: tuple[int, str] | None = None) -> Verification:
        """Walk the chain: every hash recomputed, every seq in order, every receipt's signature
        checked and its manifest the entry's. Entries removed from the end leave a shorter chain
        that is intact: ``expect_head`` (a head recorded earlier, elsewhere) shows them."""
        anchor = await self._rows(sql.ANCHOR_ROW)
        expected_seq, prev = (int(anchor[0]["seq"]) + 1, anchor[0]["entry_hash"]) if anchor else (1, GENESIS)
        found = Verification(starts_after=expected_seq - 1)
        seen: dict[int, str] = {}
        for row in await self._rows(sql.ALL):
            entry = _entry(row)
            found.entries += 1
            found.problems += _check(entry, expected_seq, prev, jwks)
            expected_seq, prev = entry.seq + 1, entry.entry_hash
            seen[entry.seq] = entry.entry_hash
            found.head = (entry.seq, entry.entry_hash)
        if expect_head is not None and seen.get(expect_head[0]) != expect_head[1]:
            found.problems.append(f"entry {expect_head[0]} with hash {expect_head[1]} is missing or altered: "
                                  "entries were removed from the end of the ledger")
        return found


def _check(entry: Entry, seq: int, prev: str, jwks: dict[str, Any]) -> list[str]:
    where = f"entry {entry.seq} (receipt {entry.receipt_id})"
    problems = []
    if entry.seq != seq:
        problems.append(f"entries {seq} to {entry.seq - 1} are missing before {where}")
    if entry.prev_hash != prev:
        problems.append(f"{where} does not chain to the entry before it (removed, altered or reordered)")
    recomputed = entry_hash(entry.prev_hash, entry.seq, entry.receipt_id, entry.recorded_at, entry.operation,
                            entry.redo, entry.salt, entry.manifest, entry.receipt)
    if recomputed != entry.entry_hash:
        problems.append(f"{where} was altered: its content does not match its hash")
    try:
        claims = verify(entry.receipt, jwks)
    except Invalid as why:
        return [*problems, f"{where}: its receipt does not verify: {why}"]
    if claims.get("jti") != entry.receipt_id or claims.get("manifest", {}).get("entries") != entry.manifest:
        problems.append(f"{where}: its manifest or id differs from its signed receipt")
    return problems
