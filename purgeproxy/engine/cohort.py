"""Many patients at once (R6 ``Group/[id]/$purge``, Kodjin's ``Patient/$bulk-purge``): who is in
the cohort, what became of each patient, and the Group itself.

Each patient is purged by the ordinary purge (a child job each, see ``jobs.fanout``); this module
only decides the cohort before any of that starts and reports the end. A Group's members are read
once, at kick-off, and recorded with the job: a Group edited during the job does not widen it. A
member that is not a Patient, or is marked inactive, is reported and not followed: deleting the
wrong data is worse than leaving some. The Group itself goes first, and only in the version read
at kick-off (one edited since is kept): it references every member, so on an upstream with
referential integrity (HAPI) a kept Group would block every member's Patient delete.

What a member's purge may delete is decided with the cohort (``Policy.cohort``): a resource shared
only among members is the cohort's data and goes. Members' purges run side by side, so two may
delete the same such resource (the second finds it gone: counted once over the cohort, from the
keys each child reports, ``child_details``), and one member's data may reference another's (on
HAPI that blocks the referenced delete until the referrer's own purge deleted it): once every
child ended, a child that ended incomplete only because of resources that are gone by now is
run once more (``worth_retrying``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.removal import Context, Refused, Result, remove
from purgeproxy.engine.verify import read_current, version_of
from purgeproxy.fhir.client import GONE
from purgeproxy.fhir.outcome import issue, outcome
from purgeproxy.fhir.references import Key, is_valid_id, parse_reference

SHARED_REMOVED = "cohort_shared_removed"  # a child's details: resources shared only within the cohort it removed
BLOCKED_BY = "blocked_by"  # a child's details: what kept it from completing, when nothing else did


@dataclass(frozen=True)
class Cohort:
    patients: list[str]  # distinct, in the order given
    not_followed: list[str] = field(default_factory=list)  # why each non-patient member was left
    group: str | None = None  # the Group's id, for a Group $purge
    group_version: str | None = None  # as read at kick-off

    def to_json(self) -> dict[str, Any]:
        return {"patients": self.patients, "not_followed": self.not_followed, "group": self.group,
                "group_version": self.group_version}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cohort:
        return cls(list(data["patients"]), list(data["not_followed"]), data.get("group"), data.get("group_version"))


def check_size(count: int, limit: int, confirmed: bool, shape: str) -> None:
    """The confirmation rail for cohorts: more than ``purge.max_patients_without_confirm``
    patients need ``confirm=true``; refused before anything is stored or deleted."""
    if count == 0:
        raise Refused(422, "business-rule", f"{shape} names no patient to purge; nothing was deleted")
    if count > limit and not confirmed:
        raise Refused(422, "business-rule", f"{shape} names {count} patients, more than "
                      f"purge.max_patients_without_confirm ({limit}); add confirm=true if that is meant; "
                      "nothing was deleted", expression="confirm")


def distinct_patients(ids: list[str]) -> list[str]:
    """Every id checked against the FHIR id rule; repeated ids purge one patient once."""
    for index, pid in enumerate(ids):
        if not is_valid_id(pid):
            raise Refused(400, "invalid", f"patientId number {index + 1} does not match the FHIR id rule",
                          expression=f"Parameters.parameter[{index}]")
    return list(dict.fromkeys(ids))


async def read_group(ctx: Context, group_id: str) -> Cohort:
    """The Group's patient members now, and the version they were read in."""
    answer = await ctx.get(f"Group/{group_id}", headers={"Cache-Control": "no-cache"})
    if answer.status in GONE:
        raise Refused(404, "not-found", f"Group/{group_id} was not found on the upstream; nothing was deleted")
    if answer.status != 200 or answer.resource_type != "Group":
        raise Refused(502, "exception", f"reading Group/{group_id} answered {answer.status}")
    patients: list[str] = []
    not_followed: list[str] = []
    for index, member in enumerate(answer.body.get("member") or []):
        reference = ((member or {}).get("entity") or {}).get("reference")
        key = parse_reference(reference, ctx.client.base_url) if isinstance(reference, str) else None
        if key is None or key[0] != "Patient":
            shown = f"{key[0]}/{key[1]}" if key else f"member[{index}] (not a literal reference on this server)"
            not_followed.append(f"{shown} is not a Patient")
        elif member.get("inactive") is True:
            not_followed.append(f"Patient/{key[1]} is an inactive member")
        else:
            patients.append(key[1])
    return Cohort(list(dict.fromkeys(patients)), not_followed, group_id, version_of(answer.body))


async def remove_group(ctx: Context, group_id: str, version: str | None) -> Result:
    """The Group, only in the version read at kick-off: one edited since is kept and reported."""
    key: Key = ("Group", group_id)

    async def changed_is_out_of_scope(resources: list[dict[str, Any]]) -> set[Key]:
        return set()

    removal = Result("$purge", f"Group/{group_id}", False)
    return await remove(ctx, removal, [key], True, {key: version}, changed_is_out_of_scope)


def cohort_outcome(cohort: Cohort, verdicts: list[tuple[str, bool, str]], group: Result | None,
                   dry_run: bool) -> dict[str, Any]:
    """One issue for the whole job, then one per patient (``success`` / ``incomplete`` with the
    reason its own purge gave), the members not followed, and what became of the Group."""
    failed = [pid for pid, ok, _ in verdicts if not ok]
    group_left = cohort.group is not None and not _group_gone(group)
    total = len(verdicts)
    if dry_run:
        head = issue("information", "informational", f"Dry run of {total} patient purge(s); nothing was deleted")
    elif failed or group_left:
        head = issue("warning", "incomplete", f"{total - len(failed)} of {total} patient(s) purged completely; "
                     f"{len(failed)} incomplete" + (f"; Group/{cohort.group} was kept" if group_left else ""))
    else:
        head = issue("information", "success", f"All {total} patient(s) purged completely"
                     + (f", and Group/{cohort.group} deleted" if cohort.group else ""))
    issues = [head]
    for pid, ok, why in verdicts:
        issues.append(issue("information", "success", f"Patient/{pid}: success: {why}", expression=[f"Patient/{pid}"])
                      if ok else issue("warning", "incomplete", f"Patient/{pid}: incomplete: {why}",
                                       expression=[f"Patient/{pid}"]))
    issues += [issue("information", "informational", f"Group member {text}: reported, not followed")
               for text in cohort.not_followed]
    if cohort.group and not dry_run:
        issues.append(_group_issue(cohort.group, group))
    return outcome(*issues)


def _group_gone(group: Result | None) -> bool:
    return group is not None and group.complete and not group.deletion.changed


def _group_issue(group_id: str, group: Result | None) -> dict[str, Any]:
    if group is None:
        return issue("warning", "incomplete", f"Group/{group_id} was not removed")
    if group.complete and group.deletion.changed:
        return issue("warning", "incomplete", f"Group/{group_id} was kept: it changed since the job started")
    if group.complete:
        return issue("information", "success", f"Group/{group_id} was deleted")
    return issue("warning", "incomplete", f"Group/{group_id} could not be removed completely: "
                 + "; ".join(group.errors or [f"{len(group.remaining)} still present"]))


def child_details(result: Result) -> dict[str, list[str]]:
    """What the parent needs from a member's purge besides its answer: the resources shared only
    within the cohort that it counted as removed (deleted, or found gone), so that the cohort's
    totals count each once; and, when it ended incomplete only because resources it does not
    delete still reference what it had to delete, those resources (``worth_retrying``)."""
    if result.purge is None:
        return {}
    plan, deletion = result.purge.plan, result.deletion
    within = {key for key, others in plan.shared.items() if others <= plan.cohort}
    removed = within & (set(deletion.deleted) | set(deletion.already_gone))
    details = {SHARED_REMOVED: [f"{t}/{i}" for t, i in sorted(removed)]}
    if _only_blocked(result):
        roots = {blocker for blocker in deletion.blockers.values() if blocker not in deletion.blocked}
        details[BLOCKED_BY] = [f"{t}/{i}" for t, i in sorted(roots)]
    return details


def _only_blocked(result: Result) -> bool:
    """Incomplete, and for no reason but resources referencing what it had to delete."""
    deletion, hard = result.deletion, result.hard_delete_method is not None
    others = (result.errors or result.interruption or deletion.failed or deletion.unexamined
              or deletion.hard_delete_failed or result.history_remaining
              or (result.purge is not None and result.purge.left_over(hard)))
    return bool(deletion.blocked) and not others and set(result.remaining) <= set(deletion.blocked)


async def worth_retrying(ctx: Context, details: dict[str, Any]) -> bool:
    """A member's purge ended incomplete only because of resources that, read now, are all gone
    (another member's purge deleted them): running it once more can complete it."""
    blockers = [parse_reference(text, ctx.client.base_url) for text in details.get(BLOCKED_BY) or []]
    keys = [key for key in blockers if key is not None]
    if not keys or len(keys) != len(blockers):
        return False
    reading = await read_current(ctx.client, ctx.limit, keys)
    return len(reading.gone) == len(keys)


def shared_duplicates(details: list[dict[str, Any]]) -> int:
    """How many removals the children's counts hold twice: a resource shared only within the
    cohort that more than one member's purge counted (one deleted it, another found it gone)."""
    seen: dict[str, int] = {}
    for child in details:
        for key in child.get(SHARED_REMOVED) or []:
            seen[key] = seen.get(key, 0) + 1
    return sum(count - 1 for count in seen.values())
