"""The answer of every destructive operation: one OperationOutcome that says truthfully what was
and was not removed.

The first issue is the verdict (R6 ``$purge``: ``success`` or ``incomplete``; ``informational``
for a dry run); the ones after it give counts per type, history, every kept, blocked or doubtful
resource with the reason, and every problem. A purge's own findings (its plan's shared, excluded
and other patients' resources, attachments, earlier-deleted history) follow when the result
carries them. HAPI's ``$expunge`` answers ``Parameters.count``; that shape carries the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from purgeproxy.engine.plan import Plan, by_type
from purgeproxy.engine.result import PurgeDetails, Result
from purgeproxy.fhir.outcome import issue, outcome
from purgeproxy.fhir.references import Key


def _refs(keys: Iterable[Key]) -> str:
    return ", ".join(f"{t}/{i}" for t, i in sorted(keys))


def _info(text: str, code: str = "informational", **extra: Any) -> dict[str, Any]:
    return issue("information", code, text, **extra)


def verdict(result: Result) -> dict[str, Any]:
    """The purge names the patient and its scope; the other operations their target."""
    if result.purge is not None:
        return _purge_verdict(result, result.purge)
    name, target = result.operation, result.target
    if result.dry_run:
        return _info(f"Dry run of {name} on {target}: {len(result.planned)} resource(s) would be "
                     "deleted; nothing was deleted")
    removed = len(result.deletion.deleted)
    if result.interruption is not None:
        return issue("error", "incomplete", f"{name} on {target} was interrupted: at least "
                     f"{result.removed} resource(s) removed before the upstream failed; "
                     "what remains could not be verified; see the issues below")
    if result.complete:
        return issue("information", "success", f"{name} on {target} is complete ({removed} deleted)")
    return issue("warning", "incomplete", f"{name} on {target} is incomplete: {removed} deleted, "
                 f"{len(result.remaining)} still present; see the issues below")


def _purge_verdict(result: Result, purge: PurgeDetails) -> dict[str, Any]:
    patient = result.target
    # an operator must be able to tell a mistyped id from an erasure that is already done
    missing = "" if purge.plan.patient_exists else (f"; no {patient} was found on the upstream "
                                                    "(never existed, or already purged)")
    if result.dry_run:
        return _info(f"Dry run: {len(result.planned)} resource(s) of {patient} would be deleted; "
                     f"nothing was deleted{missing}")
    removed = result.removed
    if result.interruption is not None:
        return issue("error", "incomplete",
                     f"The purge of {patient} was interrupted: at least {removed} resource(s) removed "
                     f"before the upstream failed ({result.interruption.text}); what remains in scope "
                     "could not be verified; see the issues below, then run the purge again")
    deleted = f"at least {removed} deleted" if result.removed_earlier else f"{removed} deleted"
    if result.complete:
        return issue("information", "success",
                     f"All resources for {patient} in scope were purged ({deleted}){missing}")
    return issue("warning", "incomplete",
                 f"The purge of {patient} is incomplete: {deleted}, "
                 f"{len(result.remaining)} in scope remain; see the issues below")


def _earlier(result: Result) -> list[dict[str, Any]]:
    """A resumed job: the counts below are this attempt's, the verdict's are the whole job's. The
    earlier attempts' count is what they recorded: one killed with transactions in flight removed
    those too without recording them (CI once saw 3,051 recorded of 3,071 removed), so it is a
    lower bound."""
    if not result.removed_earlier:
        return []
    return [_info(f"At least {result.removed_earlier} resource(s) were removed by earlier attempts of "
                  "this job (interrupted and resumed; an attempt stopped mid-batch does not record that "
                  "batch); the per-type counts below are the last attempt's")]


def _counts(result: Result) -> list[dict[str, Any]]:
    verb = "would be deleted" if result.dry_run else "deleted"
    texts = [_info(f"{rtype}: {count} {verb}", expression=[rtype]) for rtype, count in result.counts().items()]
    if result.expunged is not None:
        texts.append(_info(f"the upstream's $expunge reports {result.expunged} version(s) removed"))
    return texts + [_info(text) for text in result.notes]


def _history(result: Result) -> list[dict[str, Any]]:
    method = result.hard_delete_method
    if not result.planned:
        return []
    if result.dry_run:
        return [_info(f"history would be removed with {method}" if method
                      else "history would be kept: no hard delete (this upstream offers none, or it is not used)")]
    checked, deleted = result.history_checked, len(result.deletion.deleted)
    if result.interruption is not None or (result.errors and result.removed and not checked):
        return [issue("warning", "incomplete", "history was not read back: the operation did not finish; "
                      "old versions may still be readable")]
    scope = (f"{checked} deleted resource(s)" if checked >= deleted
             else f"a sample of {checked} of the {deleted} deleted resources")
    left = result.history_remaining
    if method is None:
        if not left:
            return [_info(f"history: the upstream serves no history for {scope} (read back after "
                          "deleting; this upstream offers no hard delete, its DELETE drops history)")]
        return [issue("warning", "not-supported",
                      f"history was not removed: the upstream still serves it for {len(left)} of {scope}: "
                      "this upstream offers no hard delete (or hard_delete is 'never'); old versions "
                      f"may still be readable, e.g. {_refs(left)}")]
    texts = [_info(f"history removed with {method} for {len(result.deletion.hard_deleted)} resource(s)")]
    texts += [issue("error", "incomplete", f"history of {t}/{i} was not removed: {why}")
              for (t, i), why in sorted(result.deletion.hard_delete_failed.items())]
    if left:
        texts.append(issue("error", "incomplete", f"history still readable after hard delete: {_refs(left)}"))
    return texts


def _kept(result: Result) -> list[dict[str, Any]]:
    texts = [] if result.purge is None else _plan_kept(result, result.purge)
    kept = {**result.kept, **result.deletion.changed}
    texts += [_info(f"kept: {t}/{i}: {why}") for (t, i), why in sorted(kept.items())]
    return texts + ([] if result.purge is None else _outside(result.purge))


def _plan_kept(result: Result, purge: PurgeDetails) -> list[dict[str, Any]]:
    """What the purge's policies keep: excluded types, shared resources, other patients' records."""
    plan = purge.plan
    texts = [_info(f"kept (excluded type {rtype}): {_refs((rtype, i) for i in ids)}", expression=[rtype])
             for rtype, ids in by_type(plan.excluded).items()]
    deleting = "would be deleted" if result.dry_run else "deleted"
    texts += [_info(f"{deleting if (t, i) in plan.order else 'kept'} (shared): {t}/{i} is also in "
                    f"the compartment of {_refs(('Patient', p) for p in others)}")
              for (t, i), others in sorted(plan.shared.items()) if not others <= plan.cohort]
    texts += _within_cohort(result, plan)
    texts += [_info(f"kept (another patient's own record): {t}/{i} references Patient/{plan.patient_id} "
                    f"through {', '.join(sorted(params))}; a purge never deletes another patient's record")
              for (t, i), params in sorted(plan.other_records.items())]
    return texts + [issue("warning", "not-found",
                          f"the upstream ignored the search parameter {t}?{'/'.join(sorted(params))}: it returned "
                          f"{t}/{i}, which does not reference Patient/{plan.patient_id}; not deleted")
                    for (t, i), params in sorted(plan.ignored.items())]


def _within_cohort(result: Result, plan: Plan) -> list[dict[str, Any]]:
    """Resources shared only with other members of the same many-patient purge: deleted, by
    this purge or (measured: found gone when this one came to delete it) by another member's."""
    within = {key: others for key, others in plan.shared.items() if others <= plan.cohort}
    if not within:
        return []
    deleted, gone = set(result.deletion.deleted), set(result.deletion.already_gone)
    texts = []
    for (t, i), others in sorted(within.items()):
        what = ("would be deleted" if result.dry_run else "deleted" if (t, i) in deleted
                else "already gone when this purge came to it (deleted since it was read, e.g. by another "
                     "member's purge)"
                if (t, i) in gone else "not deleted")
        texts.append(_info(f"{what} (shared only within the cohort): {t}/{i} is also in the compartment of "
                           f"{_refs(('Patient', p) for p in others)}, all of them patients of this purge's cohort"))
    return texts


def _outside(purge: PurgeDetails) -> list[dict[str, Any]]:
    """Resources outside the scope that still reference what is deleted, and what was searched."""
    plan = purge.plan
    kept = set(plan.excluded) | set(plan.shared) | set(plan.other_records)
    texts = [_info(f"{t}/{i} is {'kept' if (t, i) in kept else 'outside the compartment'} and still "
                   f"references {_refs(targets)}")
             for (t, i), targets in sorted(plan.outside_references.items())]
    texts += [_info(f"{t}/{i} references {_refs(targets)}; it is another cohort member's data, which that "
                    "member's own purge deletes: its references are left as they are")
              for (t, i), targets in sorted(plan.cohort_references.items())]
    return texts + _referrers_searched(purge)


def _referrers_searched(purge: PurgeDetails) -> list[dict[str, Any]]:
    """What the listing of outside references covers, so that its silence is not over-read."""
    searched, planned = purge.referrers_searched, len(purge.plan.order)
    if searched is None or not planned:
        return []
    if searched >= planned:
        return [_info(f"resources outside the compartment referencing any of the {planned} resource(s) "
                      "to delete were searched for; those found are listed")]
    patient = f"Patient/{purge.patient_id}"
    what = f"searched for references to {patient} only" if searched else "not searched for references"
    return [_info(f"resources outside the compartment were {what}: references to the other "
                  f"{planned - searched} resource(s) to delete were not searched (purge.outside_references_members)")]


def _problems(result: Result) -> list[dict[str, Any]]:
    texts = [] if result.purge is None else [
        issue("error", "not-supported", f"could not search {t}?{p}: {why}")
        for (t, p), why in sorted(result.purge.plan.unsearchable.items())]
    texts += [issue("error", "conflict", f"{t}/{i} was not deleted: {why}")
              for (t, i), why in sorted(result.deletion.blocked.items())]
    texts += [issue("error", "exception", f"{t}/{i} was not deleted: {why}")
              for (t, i), why in sorted(result.deletion.failed.items())]
    texts += [issue("error", "conflict", f"{t}/{i} {why}")
              for (t, i), why in sorted(result.deletion.unexamined.items())]
    if result.remaining:
        texts.append(issue("error", "incomplete", f"still present: {_refs(result.remaining)}"))
    texts += [issue("error", "exception", text) for text in result.errors]
    return texts


def _attachments(result: Result, purge: PurgeDetails) -> list[dict[str, Any]]:
    """Binaries holding the patient's documents: kept, shared, unreadable, unsearchable."""
    found, patient = purge.attachments, result.target
    deleting = "would be deleted" if result.dry_run else "deleted"
    texts = [_info(f"kept ({why}): {t}/{i}") for (t, i), why in sorted(found.kept.items())]
    texts += [_info(f"{deleting if (t, i) in found.delete else 'kept'} (shared): {t}/{i}: {why}")
              for (t, i), why in sorted(found.shared.items())]
    texts += [issue("error", "exception", f"{t}/{i} (an attachment) could not be checked: {why}; not deleted")
              for (t, i), why in sorted(found.unreadable.items())]
    if purge.versions_unknown:
        texts.append(issue("warning", "not-supported",
                           f"references to a version of {patient} (Patient/<id>/_history/<version>) could not "
                           f"be searched ({purge.versions_unknown}); resources holding them may remain"))
    if found.unsearched:
        texts.append(issue("warning", "not-supported",
                           f"Binaries whose securityContext is {patient} and that no deleted resource "
                           f"references could not be searched ({found.unsearched}); they may remain"))
    return texts


def _earlier_deleted(result: Result, purge: PurgeDetails) -> list[dict[str, Any]]:
    """History of the patient's resources deleted before the purge: removed, kept, or unknown."""
    earlier = purge.earlier_deleted
    what = "history of resource(s) deleted before this purge"
    texts = [_info(f"kept ({why}): {what}: {t}/{i}") for (t, i), why in sorted(earlier.kept.items())]
    if earlier.broken:
        left = result.hard_delete_method is not None and not result.dry_run  # as ``left_over`` counts it
        texts.append(issue("error" if left else "warning", "incomplete",
                           f"{what} could not be listed to its end ({earlier.unlisted}); "
                           f"such history of {result.target} may remain"))
    elif earlier.unlisted:
        texts.append(issue("warning", "not-supported",
                           f"{what} could not be searched on this upstream ({earlier.unlisted}); "
                           f"such history of {result.target} may remain"))
    if earlier.listed_back_to:
        texts.append(issue("warning", "too-costly",
                           f"{what} was searched back to {earlier.listed_back_to} only (the newest "
                           f"{earlier.listed_entries} changes on the upstream, purge.earlier_deleted_max_entries): "
                           f"such history of {result.target} deleted before then may remain"))
    if not earlier.found:
        return texts
    method = result.hard_delete_method
    if result.dry_run or method is None:
        verb = (f"would be removed with {method}" if method else "would remain: no hard delete") \
            if result.dry_run else "remains readable: no hard delete (or hard_delete is 'never')"
        severity = "information" if result.dry_run else "warning"
        code = "informational" if result.dry_run else "not-supported"
        return texts + [issue(severity, code, f"{what} {verb}: {_refs(earlier.found)}")]
    done = [k for k in earlier.hard_deleted if k not in earlier.history_remaining]
    if done:
        texts.append(_info(f"{what} removed with {method}: {_refs(done)}"))
    texts += [issue("error", "incomplete", f"{what}: {t}/{i} was not removed: {why}")
              for (t, i), why in sorted(earlier.failed.items())]
    if earlier.history_remaining:
        texts.append(issue("error", "incomplete", f"{what} still readable after hard delete: "
                                                  f"{_refs(earlier.history_remaining)}"))
    return texts


RECEIPT_EXTENSION = "urn:purgeproxy:extension:receipt"  # the compact JWS
RECEIPT_SALT_EXTENSION = "urn:purgeproxy:extension:receipt-salt"


def _receipt(result: Result) -> list[dict[str, Any]]:
    """The signed receipt (``purgeproxy.receipts``), as an extension of an informational issue."""
    receipt = result.receipt
    if receipt is None:
        return []
    return [_info(f"erasure receipt {receipt.id}: signed; also at $receipt/{receipt.id}, keys at $receipt-keys; "
                  f"its digests are salted with {receipt.salt}",
                  extension=[{"url": RECEIPT_EXTENSION, "valueString": receipt.token},
                             {"url": RECEIPT_SALT_EXTENSION, "valueString": receipt.salt}])]


def _references_removed(purge: PurgeDetails) -> list[dict[str, Any]]:
    """``_remove-references``: one issue per kept referrer, saying what became of it."""
    return [_info(f"{t}/{i}: {text}", expression=[f"{t}/{i}"]) if done
            else issue("warning", "incomplete", f"{t}/{i}: {text}", expression=[f"{t}/{i}"])
            for (t, i), (done, text) in sorted(purge.references_removed.items())]


def result_outcome(result: Result) -> dict[str, Any]:
    """The one OperationOutcome of every destructive operation."""
    purge = [] if result.purge is None else [*_attachments(result, result.purge),
                                             *_earlier_deleted(result, result.purge),
                                             *_references_removed(result.purge)]
    return outcome(verdict(result), *_earlier(result), *_counts(result), *_history(result), *_kept(result),
                   *purge, *_problems(result), *_receipt(result))


def expunge_parameters(result: Result) -> dict[str, Any]:
    """HAPI's ``$expunge`` answer (``count``), with the proxy's outcome as a second parameter."""
    count = result.expunged if result.expunged is not None else len(result.deletion.deleted)
    return {"resourceType": "Parameters", "parameter": [
        {"name": "count", "valueInteger": count},
        {"name": "outcome", "resource": result_outcome(result)},
        *([] if result.receipt is None else [{"name": "receipt", "valueString": result.receipt.token},
                                             {"name": "receiptSalt", "valueString": result.receipt.salt}]),
    ]}
