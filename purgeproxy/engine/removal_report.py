"""The answer of a vendor-shaped operation: an OperationOutcome saying what was removed and not.

Same rules as the purge's report: the first issue is the verdict (``success``, ``incomplete``,
or ``informational`` for a dry run), then counts, history, what was kept and every problem.
HAPI's ``$expunge`` answers ``Parameters.count``; that shape carries the outcome along.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from purgeproxy.engine.removal import Removal
from purgeproxy.fhir.outcome import issue, outcome
from purgeproxy.fhir.references import Key


def _refs(keys: Iterable[Key]) -> str:
    return ", ".join(f"{t}/{i}" for t, i in sorted(keys))


def _info(text: str, code: str = "informational") -> dict[str, Any]:
    return issue("information", code, text)


def verdict(removal: Removal) -> dict[str, Any]:
    name, target = removal.operation, removal.target
    if removal.dry_run:
        return _info(f"Dry run of {name} on {target}: {len(removal.planned)} resource(s) would be "
                     "deleted; nothing was deleted")
    removed = len(removal.deletion.deleted)
    if removal.interruption is not None:
        return issue("error", "incomplete", f"{name} on {target} was interrupted: at least "
                     f"{removal.removed_before_failure} resource(s) removed before the upstream failed; "
                     "what remains could not be verified; see the issues below")
    if removal.complete:
        return issue("information", "success", f"{name} on {target} is complete ({removed} deleted)")
    return issue("warning", "incomplete", f"{name} on {target} is incomplete: {removed} deleted, "
                 f"{len(removal.remaining)} still present; see the issues below")


def _counts(removal: Removal) -> list[dict[str, Any]]:
    verb = "would be deleted" if removal.dry_run else "deleted"
    texts = [_info(f"{rtype}: {count} {verb}") for rtype, count in removal.counts().items()]
    if removal.expunged is not None:
        texts.append(_info(f"the upstream's $expunge reports {removal.expunged} version(s) removed"))
    return texts


def _history(removal: Removal) -> list[dict[str, Any]]:
    method = removal.hard_delete_method
    if removal.dry_run or not removal.planned:
        return []
    if removal.interruption is not None:
        return [issue("warning", "incomplete", "history was not read back: the upstream failed first; "
                      "old versions may still be readable")]
    left = removal.history_remaining
    if method is None:
        if not left:
            return [_info("history: the upstream serves no history for the deleted resource(s) "
                          "(checked after deleting)")]
        return [issue("warning", "not-supported", f"history was not removed for {_refs(left)}: this "
                      "upstream offers no hard delete; old versions may still be readable")]
    texts = [issue("error", "incomplete", f"history of {t}/{i} was not removed: {why}")
             for (t, i), why in sorted(removal.deletion.hard_delete_failed.items())]
    if left:
        texts.append(issue("error", "incomplete", f"history still readable after hard delete: {_refs(left)}"))
    return texts or [_info(f"history removed with {method} (checked after deleting)")]


def _kept(removal: Removal) -> list[dict[str, Any]]:
    kept = {**removal.kept, **removal.deletion.changed}
    return [_info(f"kept: {t}/{i}: {why}") for (t, i), why in sorted(kept.items())]


def _problems(removal: Removal) -> list[dict[str, Any]]:
    texts = [issue("error", "conflict", f"{t}/{i} was not deleted: {why}")
             for (t, i), why in sorted(removal.deletion.blocked.items())]
    texts += [issue("error", "exception", f"{t}/{i} was not deleted: {why}")
              for (t, i), why in sorted(removal.deletion.failed.items())]
    texts += [issue("error", "conflict", f"{t}/{i} {why}")
              for (t, i), why in sorted(removal.deletion.unexamined.items())]
    if removal.remaining:
        texts.append(issue("error", "incomplete", f"still present: {_refs(removal.remaining)}"))
    return texts + [issue("error", "exception", text) for text in removal.errors]


def removal_outcome(removal: Removal) -> dict[str, Any]:
    notes = [_info(text) for text in removal.notes]
    return outcome(verdict(removal), *_counts(removal), *notes, *_history(removal),
                   *_kept(removal), *_problems(removal))


def expunge_parameters(removal: Removal) -> dict[str, Any]:
    """HAPI's ``$expunge`` answer (``count``), with the proxy's outcome as a second parameter."""
    count = removal.expunged if removal.expunged is not None else len(removal.deletion.deleted)
    return {"resourceType": "Parameters", "parameter": [
        {"name": "count", "valueInteger": count},
        {"name": "outcome", "resource": removal_outcome(removal)},
    ]}
