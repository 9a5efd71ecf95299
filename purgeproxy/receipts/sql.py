"""The ledger's and the receipt keys' SQL, written once for SQLite and PostgreSQL.

Tables of their own next to the jobs table (``purgeproxy.jobs.sql``), in the same store. Parameters
are ``:name`` as there. Times are ISO 8601 UTC text of one fixed format, so that they sort as text
and hash the same on every backend.
"""

from __future__ import annotations

LEDGER = "purgeproxy_ledger"
ANCHOR = "purgeproxy_ledger_anchor"  # where the chain resumes after retention removed its start
KEYS = "purgeproxy_receipt_keys"

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
        seq INTEGER PRIMARY KEY, receipt_id TEXT NOT NULL UNIQUE, recorded_at TEXT NOT NULL,
        operation TEXT NOT NULL, redo TEXT, salt TEXT NOT NULL, manifest TEXT NOT NULL,
        receipt TEXT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {LEDGER}_recorded ON {LEDGER} (recorded_at)",
    f"""CREATE TABLE IF NOT EXISTS {ANCHOR} (
        id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, entry_hash TEXT NOT NULL, pruned_at TEXT NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {KEYS} (
        kid TEXT PRIMARY KEY, private_pem TEXT NOT NULL, created_at TEXT NOT NULL)""",
)

LAST = f"SELECT seq, entry_hash FROM {LEDGER} ORDER BY seq DESC LIMIT 1"
ANCHOR_ROW = f"SELECT seq, entry_hash FROM {ANCHOR} WHERE id = 1"
# seq is the primary key: of two replicas appending at once, one inserts and the other retries
APPEND = f"""INSERT INTO {LEDGER} (seq, receipt_id, recorded_at, operation, redo, salt, manifest, receipt,
        prev_hash, entry_hash)
    VALUES (:seq, :receipt_id, :recorded_at, :operation, :redo, :salt, :manifest, :receipt, :prev_hash, :entry_hash)
    ON CONFLICT (seq) DO NOTHING RETURNING seq"""
ALL = f"SELECT * FROM {LEDGER} ORDER BY seq"
SINCE = f"SELECT * FROM {LEDGER} WHERE recorded_at >= :since ORDER BY seq"
BY_RECEIPT = f"SELECT * FROM {LEDGER} WHERE receipt_id = :receipt_id"
# retention: the newest entry always stays, so that the chain goes on from it
LAST_EXPIRED = f"""SELECT seq, entry_hash FROM {LEDGER}
    WHERE recorded_at < :cutoff AND seq < (SELECT MAX(seq) FROM {LEDGER}) ORDER BY seq DESC LIMIT 1"""
SET_ANCHOR = f"""INSERT INTO {ANCHOR} (id, seq, entry_hash, pruned_at) VALUES (1, :seq, :entry_hash, :pruned_at)
    ON CONFLICT (id) DO UPDATE SET seq = :seq, entry_hash = :entry_hash, pruned_at = :pruned_at"""
PRUNE = f"DELETE FROM {LEDGER} WHERE seq <= :seq"

ADD_KEY = f"""INSERT INTO {KEYS} (kid, private_pem, created_at) VALUES (:kid, :private_pem, :created_at)
    ON CONFLICT (kid) DO NOTHING"""
STORED_KEYS = f"SELECT kid, private_pem, created_at FROM {KEYS} ORDER BY created_at, kid"
