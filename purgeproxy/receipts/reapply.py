"""Re-applying erasures after a backup restore: every erasure the ledger recorded since a date is
run again against the upstream, through the same engine functions and the same result stage.

A restore brings back what was erased; re-running the original operation (the purge of the same
patient with the same compartment, the erase of the same instance, the same cascade) finds it
again, proves it in scope as the first time did, deletes and verifies it. The ledger's digests
then tell which of the resources found had been erased before (they came back) and which are new.
Each re-run gets its own receipt. Erasures recorded without a ``redo`` (by criteria, single
versions, history only) are listed as not re-applicable, never guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from purgeproxy.app_keys import CONFIG, PROFILE, RECEIPTS
from purgeproxy.engine.cascade import cascade_delete
from purgeproxy.engine.erase import erase_resource
from purgeproxy.engine.purge import PurgeRequest
from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.engine.report import verdict
from purgeproxy.engine.result import Result
from purgeproxy.fhir.outcome import OutcomeError, issue, outcome
from purgeproxy.fhir.references import Key
from purgeproxy.receipts import stage
from purgeproxy.receipts.ledger import Entry
from purgeproxy.receipts.receipt import digest

Progress = Callable[[int, int], Awaitable[None]]


@dataclass
class Reapplied:
    """One recorded erasure run again."""

    redo: dict[str, Any]
    entries: list[Entry]  # every ledger entry of this same erasure since the date
    result: Result | None = None
    failure: str | None = None  # refused or failed before deleting

    def came_back(self) -> list[Key]:
        """Found again (deleted again, or would be on a dry run) and in an earlier manifest."""
        found = self.result.planned if self.result and self.result.dry_run else (
            self.result.deletion.deleted if self.result else [])
        return [key for key in found if any(digest(e.salt, key) in set(e.manifest) for e in self.entries)]

    @property
    def complete(self) -> bool:
        return self.failure is None and self.result is not None and (self.result.dry_run or self.result.complete)


@dataclass
class Report:
    since: datetime
    dry_run: bool
    runs: list[Reapplied] = field(default_factory=list)
    not_reapplicable: list[Entry] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs)


def grouped(entries: list[Entry]) -> tuple[list[Reapplied], list[Entry]]:
    """One run per distinct erasure (an erasure re-applied before is recorded again: run it once)."""
    runs: dict[str, Reapplied] = {}
    skipped = []
    for entry in entries:
        if entry.redo is None:
            skipped.append(entry)
            continue
        runs.setdefault(json.dumps(entry.redo, sort_keys=True), Reapplied(entry.redo, [])).entries.append(entry)
    return list(runs.values()), skipped


async def reapply(app: web.Application, since: datetime, caller: str, dry_run: bool = False,
                  progress: Progress | None = None) -> Report:
    """Run again every erasure recorded since ``since``; each result passes the one stage (its own
    receipt and audit). ``progress`` is called between erasures (a job's lease)."""
    runs, skipped = grouped(await app[RECEIPTS].ledger.since(since))
    report = Report(since, dry_run, runs, skipped)
    for index, run in enumerate(runs):
        if progress is not None:
            await progress(index, len(runs))
        reason = f"re-applied after a restore (receipt {run.entries[0].receipt_id})"
        ERASURE_REASON.set(reason)
        try:
            run.result = await _run(app, run.redo, dry_run)
        except OutcomeError as refused:  # refused (e.g. hard_delete: require) or the upstream failed
            run.failure = refused.text
            continue
        if not dry_run:
            await stage.conclude(app, caller, run.result, reason)
    return report


async def _run(app: web.Application, redo: dict[str, Any], dry_run: bool) -> Result:
    """The recorded operation, as it first ran, confirmed: the operator asked for exactly this."""
    from purgeproxy.operations.purge import engine_of  # the purge engine, as its handler runs it
    from purgeproxy.operations.vendor import app_context

    operation, (rtype, rid) = redo["operation"], redo["target"].split("/", 1)
    if operation == "$purge":
        compartment = {name: tuple(params) for name, params in redo["compartment"].items()}
        engine = engine_of(app, await app[PROFILE].get())
        return await engine.run(PurgeRequest(rid, compartment, dry_run, confirmed=True))
    ctx = await app_context(app)
    if operation == "cascade-delete":
        return await cascade_delete(ctx, (rtype, rid), app[CONFIG].cascade.max_rounds, dry_run,
                                    bool(redo.get("hard")), confirmed=True)
    return await erase_resource(ctx, (rtype, rid), dry_run, operation)


def _counts(keys: list[Key]) -> str:
    counts: dict[str, int] = {}
    for rtype, _ in keys:
        counts[rtype] = counts.get(rtype, 0) + 1
    return ", ".join(f"{rtype}: {count}" for rtype, count in sorted(counts.items())) or "none"


def report_outcome(report: Report) -> dict[str, Any]:
    """The answer: one verdict, then per erasure what came back and whether it is gone again.
    Resources are counted per type; only the erasure's own target is named (as in the ledger)."""
    back = sum(len(run.came_back()) for run in report.runs)
    when = report.since.isoformat(timespec="seconds")
    head = (f"{len(report.runs)} erasure(s) recorded since {when} "
            f"{'checked (dry run)' if report.dry_run else 're-applied'}: {back} erased resource(s) had come back"
            + ("" if report.dry_run else " and were removed again"))
    if report.dry_run:
        first = issue("information", "informational", head + "; nothing was deleted")
    elif report.complete:
        first = issue("information", "success", head + "; every re-run verified complete")
    else:
        first = issue("warning", "incomplete", head + "; some re-runs are incomplete: see below")
    return outcome(first, *(_run_issue(run, report.dry_run) for run in report.runs),
                   *(issue("warning", "not-supported", f"receipt {entry.receipt_id} ({entry.operation}) is not "
                           "re-applicable: recorded by digests only (criteria, single versions or history); "
                           "run it again by hand") for entry in report.not_reapplicable))


def _run_issue(run: Reapplied, dry_run: bool) -> dict[str, Any]:
    what = f"{run.redo['operation']} of {run.redo['target']} (receipt {run.entries[0].receipt_id})"
    if run.failure is not None or run.result is None:
        return issue("error", "exception", f"{what} could not be re-applied: {run.failure}")
    back = run.came_back()
    verb = "would be removed again" if dry_run else "removed again"
    text = f"{what}: {len(back)} erased resource(s) had come back ({_counts(back)}), {verb}"
    new = [k for k in (run.result.planned if dry_run else run.result.deletion.deleted) if k not in back]
    if new:
        text += f"; {len(new)} other resource(s) in its scope too ({_counts(new)})"
    first = verdict(run.result)
    if run.result.receipt is not None:
        text += f"; receipt {run.result.receipt.id}"
    return issue(first["severity"], first["code"], f"{text}. {first['diagnostics']}")
