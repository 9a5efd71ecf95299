"""Fan-out bookkeeping and reference removal as plain functions: progress summed over children,
a child's verdict read from its own answer, and exactly the Reference elements removed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from purgeproxy.engine.unreference import strip_references
from purgeproxy.jobs.fanout import child_verdict, progress
from purgeproxy.jobs.store import Job

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
