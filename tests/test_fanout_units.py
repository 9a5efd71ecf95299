"""Fan-out bookkeeping and reference removal as plain functions: progress summed over children,
a child's verdict read from its own answer, and exactly the Reference elements removed; and the
cohort rule: what a member's purge may delete, planned and re-checked with the same rule; and the
one bound on hard deletes that the members' purges, run side by side, share."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx

from purgeproxy.app import create_app
from purgeproxy.engine.cohort import BLOCKED_BY, SHARED_REMOVED, child_details
from purgeproxy.engine.compartment import Member, Resolution
from purgeproxy.engine.deletion import DeletionReport
from purgeproxy.engine.plan import Plan, Policy, make_plan
from purgeproxy.engine.purge import PurgeEngine, PurgeRequest, PurgeSettings
from purgeproxy.engine.result import PurgeDetails, Result
from purgeproxy.engine.unreference import strip_references
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.definitions import definitions_for
from purgeproxy.jobs.fanout import child_verdict, progress
from purgeproxy.jobs.store import Job
from purgeproxy.operations.purge import engine_of
from purgeproxy.operations.vendor import context_for
from purgeproxy.servers.profile import UpstreamProfile
from purgeproxy.servers.registry import kind_named
from tests.helpers import config_for

BASE = "http://upstream.test/fhir"


def job(jid: str, status: str = "completed", done: int = 0, total: int | None = None,
        result: dict[str, Any] | None = None, **payload: Any) -> Job:
    return Job(jid, "$purge", f"t {jid}", payload, status, total, done, result, None, 1,  # type: ignore[arg-type]
               datetime.now(UTC))


def answer(*issues: tuple[str, str, str]) -> dict[str, Any]:
    return {"status": 200, "outcome": {"resourceType": "OperationOutcome", "issue": [
        {"severity": s, "code": c, "diagnostics": d} for s, c, d in issues]}}


def test_progress_counts_finished_children_and_sums_resources() -> None:
    parent = job("p", "processing", patients=["a", "b", "c"])
    children = [job("p-0", "completed", 650, 650), job("p-1", "processing", 100, 640), job("p-2", "new")]
    assert progress(parent, children).text == "patients 1 of 3, resources 750 of 1,290"


def test_a_child_verdict_quotes_its_own_problems() -> None:
    ok = job("c0", result=answer(("information", "success", "All resources for Patient/a in scope were purged")))
    assert child_verdict(ok) == (True, "All resources for Patient/a in scope were purged")
    blocked = job("c1", "error", result=answer(("warning", "incomplete", "The purge of Patient/b is incomplete"),
                                               ("information", "informational", "Observation: 10 deleted"),
                                               ("error", "conflict", "Patient/b not deleted: still referenced by Coverage/c")))
    done, why = child_verdict(blocked)
    assert not done and "still referenced by Coverage/c" in why and "Observation: 10" not in why and "job c1" in why
    assert child_verdict(job("c2", "cancelled", 40)) == (False, "cancelled after 40 resource(s) had been removed")


def test_strip_references_removes_only_the_doomed_and_what_they_leave_empty() -> None:
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/a"}}, {"entity": {"reference": f"{BASE}/Patient/b"}},
                        {"entity": {"reference": "Patient/keep"}, "inactive": False}]}
    stripped, removed = strip_references(group, {("Patient", "a"), ("Patient", "b")}, BASE)
    assert stripped == {**group, "member": [{"entity": {"reference": "Patient/keep"}, "inactive": False}]}
    assert sorted(removed) == [("Patient", "a"), ("Patient", "b")]
    assert group["member"][0] == {"entity": {"reference": "Patient/a"}}  # the input is not changed
    report = {"resourceType": "DiagnosticReport", "subject": {"reference": "Patient/a", "display": "A"},
              "result": [{"reference": "Observation/o1"}], "code": {"text": "x"}}
    stripped, removed = strip_references(report, {("Patient", "a"), ("Observation", "o1")}, BASE)
    assert stripped == {"resourceType": "DiagnosticReport", "code": {"text": "x"}}


def member(rtype: str, rid: str, *others: str) -> Member:
    return Member((rtype, rid), "1", frozenset({"subject"}), frozenset(others), frozenset())


def planned(policy: Policy, *members: Member) -> Plan:
    resolution = Resolution("a", True, patient={"resourceType": "Patient", "id": "a"},
                            members={m.key: m for m in members})
    return make_plan(resolution, policy)


def test_shared_only_within_the_cohort_is_deleted_and_shared_with_anyone_else_is_kept() -> None:
    cohort = Policy(frozenset(), False, cohort=frozenset({"b", "c"}))
    plan = planned(cohort, member("Coverage", "ab", "b"), member("Coverage", "abc", "b", "c"),
                   member("Coverage", "ax", "b", "x"), member("Patient", "b", "b"), member("Observation", "own"))
    assert plan.order == [("Coverage", "ab"), ("Coverage", "abc"), ("Observation", "own"), ("Patient", "a")]
    assert plan.shared == {("Coverage", "ab"): {"b"}, ("Coverage", "abc"): {"b", "c"}, ("Coverage", "ax"): {"b", "x"}}
    assert set(plan.other_records) == {("Patient", "b")}  # another member's own record: its own purge's
    assert plan.cohort == frozenset({"b", "c"})
    single = planned(Policy(frozenset(), False), member("Coverage", "ab", "b"))
    assert single.order == [("Patient", "a")] and single.shared == {("Coverage", "ab"): {"b"}}
    excluded = planned(Policy(frozenset({"Coverage"}), False, cohort=frozenset({"b"})), member("Coverage", "ab", "b"))
    assert excluded.order == [("Patient", "a")] and excluded.excluded == [("Coverage", "ab")]


BASE = "http://upstream.test/fhir"


def offline_engine(cohort: frozenset[str]) -> PurgeEngine:
    """An engine whose re-check runs without an upstream (it judges bodies it is given)."""
    profile = UpstreamProfile(kind_named("generic"), definitions_for("4.0.1"), None)
    settings = PurgeSettings(Policy(frozenset({"AuditEvent"}), False), batch_size=10, page_size=10,
                             max_rounds=2, hard_delete="auto")
    engine = PurgeEngine(FhirClient(BASE, httpx.AsyncClient()), profile, settings, asyncio.Semaphore(1))
    return engine._for(PurgeRequest("a", dict(profile.definitions.patient_compartment), cohort=cohort))


def coverage(*patients: str) -> dict[str, Any]:
    return {"resourceType": "Coverage", "id": "cov", "status": "active", "meta": {"versionId": "2"},
            "beneficiary": {"reference": f"Patient/{patients[0]}"},
            "payor": [{"reference": f"Patient/{p}"} for p in patients[1:]]}


async def test_the_recheck_of_a_changed_resource_applies_the_same_cohort_rule() -> None:
    engine = offline_engine(frozenset({"b"}))
    assert engine.settings.policy.cohort == frozenset({"b"})
    still = engine._recheck(engine.resolver(dict(engine.profile.definitions.patient_compartment)), "a")
    assert await still([coverage("a", "b")]) == {("Coverage", "cov")}  # still only the cohort's
    assert await still([coverage("a", "b", "x")]) == set()  # gained a patient outside it: kept
    alone = offline_engine(frozenset())
    assert await alone._recheck(alone.resolver(dict(alone.profile.definitions.patient_compartment)), "a")(
        [coverage("a", "b")]) == set()  # no cohort: shared, kept
    assert PurgeRequest.from_json({**PurgeRequest("a", {}).to_json()}, frozenset({"a", "b"})).cohort == {"b"}


def cohort_result(plan: Plan, report: DeletionReport, remaining: list[tuple[str, str]]) -> Result:
    return Result("$purge", "Patient/a", False, deletion=report, remaining=remaining,
                  purge=PurgeDetails("a", plan))


def test_a_child_reports_its_cohort_removals_and_only_the_blockers_that_alone_kept_it_incomplete() -> None:
    plan = planned(Policy(frozenset(), False, cohort=frozenset({"b"})), member("Coverage", "ab", "b"),
                   member("Observation", "o"))
    blocked = DeletionReport(already_gone=[("Coverage", "ab")], deleted=[("Observation", "o")],
                             blocked={("Patient", "a"): "still referenced by Observation/o2",
                                      ("Observation", "o2"): "still referenced by Observation/theirs"},
                             blockers={("Patient", "a"): ("Observation", "o2"),
                                       ("Observation", "o2"): ("Observation", "theirs")})
    details = child_details(cohort_result(plan, blocked, [("Patient", "a"), ("Observation", "o2")]))
    assert details == {SHARED_REMOVED: ["Coverage/ab"], BLOCKED_BY: ["Observation/theirs"]}
    failed = replace(blocked, failed={("Observation", "o3"): "DELETE answered 500"})
    assert BLOCKED_BY not in child_details(cohort_result(plan, failed, [("Patient", "a")]))


def test_progress_counts_a_resource_two_members_removed_once_and_a_retried_child_once() -> None:
    parent = job("p", "processing", patients=["a", "b"])
    both = {"details": {SHARED_REMOVED: ["Coverage/ab"]}}
    children = [job("p-00000", "error", 40, 42, result=both), job("p-00001", "completed", 51, 51, result=both),
                job("p-00000-2", "completed", 2, 2, result={"details": {SHARED_REMOVED: []}})]
    assert progress(parent, children).text == "patients 2 of 2, resources 92 of 92"


async def test_the_purges_of_one_process_share_one_bound_on_hard_deletes(aiohttp_client: Any) -> None:
    """purge.hard_delete_concurrency bounds the process, not each purge nor each vendor operation:
    the children of a $bulk-purge run side by side (4 job workers), and 16 $expunge calls each put
    64 in flight on an upstream that 16 saturate, with httpx's pool doing work per open connection
    on every request (HAPI, 8 patients of 650: 52 resources/s against 73/s with one bound)."""
    app = create_app(config_for(BASE, purge={"hard_delete_concurrency": 2}))
    await aiohttp_client(app)  # started: the app's clients and bounds exist
    profile = UpstreamProfile(kind_named("generic"), definitions_for("4.0.1"), None)
    first, second = engine_of(app, profile), engine_of(app, profile)
    assert first.hard_limit is not None and first.hard_limit is second.hard_limit
    await first.hard_limit.acquire()
    await second.hard_limit.acquire()
    assert first.hard_limit.locked()  # two in flight over both purges: the bound is reached
    assert context_for(app, profile).hard_limit is first.hard_limit  # $erase, $delete-expunge ... too
