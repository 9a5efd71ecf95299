"""What one destructive operation removed, kept and could not remove: one type for every operation.

The purge, ``$erase``, ``$expunge``, the cascade and ``$delete-expunge`` all end here, so that one
renderer (``engine.report``), one audit call (``purgeproxy.audit``) and one notion of ``complete``
serve them all. What only a patient purge finds (its plan with shared and excluded resources,
attachments, history of resources deleted before it, the outside referrers' coverage) is the
optional ``purge`` part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.attachments import Attachments
from purgeproxy.engine.deleted_history import EarlierDeleted
from purgeproxy.engine.deletion import DeletionReport
from purgeproxy.engine.plan import Plan
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.fhir.references import Key


@dataclass
class PurgeDetails:
    """The patient purge's own findings, reported next to the shared counts."""

    patient_id: str
    plan: Plan
    attachments: Attachments = field(default_factory=Attachments)
    earlier_deleted: EarlierDeleted = field(default_factory=EarlierDeleted)
    versions_unknown: str | None = None  # why versioned references to the patient were not searched
    referrers_searched: int | None = None  # planned resources whose outside referrers were searched
    # _remove-references: each kept referrer -> (its references were removed, what happened)
    references_removed: dict[Key, tuple[bool, str]] = field(default_factory=dict)

    def left_over(self, hard: bool) -> bool:
        """Something the purge could not search, read or (with a hard delete) remove."""
        earlier = self.earlier_deleted
        earlier_left = hard and bool(earlier.failed or earlier.history_remaining or earlier.broken)
        return bool(self.plan.unsearchable or self.attachments.unreadable or earlier_left)


@dataclass(frozen=True)
class ReceiptRef:
    """The signed receipt of a result (``purgeproxy.receipts``): its id, the compact JWS, the salt
    of its digests (for the requester, who needs it to show a ``Type/id`` was covered)."""

    id: str
    token: str
    salt: str
    digest: str  # SHA-256 of the token, as the AuditEvent cites it


@dataclass
class Result:
    """What one operation removed, kept and could not remove, for its outcome and audit."""

    operation: str  # "$purge", "$erase", "cascade-delete", ...
    target: str  # what was asked for, e.g. "Observation/1" (never a query value)
    dry_run: bool
    planned: list[Key] = field(default_factory=list)
    hard_delete_method: str | None = None
    deletion: DeletionReport = field(default_factory=DeletionReport)
    kept: dict[Key, str] = field(default_factory=dict)  # reached but not deleted, and why
    remaining: list[Key] = field(default_factory=list)  # in scope, still there at the end
    history_remaining: list[Key] = field(default_factory=list)
    history_checked: int = 0  # how many deleted resources had their history read back
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    expunged: int | None = None  # versions an upstream's own $expunge says it removed
    # the caller asked for history to go too ($erase, $expunge, $delete-expunge); otherwise history
    # counts only when a hard delete was used
    permanent: bool = True
    interruption: OutcomeError | None = None  # the upstream failed mid-way: what remains is unknown
    removed_before_failure: int = 0  # measured: batches the upstream confirmed before it failed
    removed_earlier: int = 0  # by earlier attempts of the same job (a resumed asynchronous purge)
    purge: PurgeDetails | None = None
    # what re-running it after a backup restore needs (operation, target, compartment or flags);
    # None: it cannot be re-run by target (criteria, single versions, history only)
    redo: dict[str, Any] | None = None
    receipt: ReceiptRef | None = None

    @property
    def removed(self) -> int:
        """Resources removed, measured: over every attempt, and counting the batches the upstream
        confirmed before it failed (their keys never reached ``deletion``)."""
        this_run = self.deletion.removed
        return self.removed_earlier + max(this_run, self.removed_before_failure)

    @property
    def complete(self) -> bool:
        """Nothing in scope is left; history counts when the operation promised its removal."""
        hard = self.hard_delete_method is not None
        history_left = bool(self.history_remaining) and (self.permanent or hard)
        deletion = self.deletion
        return not (self.remaining or history_left or self.errors or self.interruption
                    or deletion.blocked or deletion.failed or deletion.unexamined or deletion.hard_delete_failed
                    or (self.purge is not None and self.purge.left_over(hard)))

    def counts(self) -> dict[str, int]:
        """Per type: what would be deleted (dry run) or what was deleted."""
        keys = self.planned if self.dry_run else self.deletion.deleted
        counts: dict[str, int] = {}
        for rtype, _ in keys:
            counts[rtype] = counts.get(rtype, 0) + 1
        return dict(sorted(counts.items()))
