"""Data that used to survive a `success`: document bytes (Binary), history of resources deleted
before the purge, and reference forms the upstream's search does not normalise.

Each scenario runs against the real Medplum engine and a real HAPI, with a control patient whose
resources (and their whole `_history`) must stay byte-identical, and guards that the fix cannot
delete more (`purge.shared: delete`, a custom CompartmentDefinition).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests import seed as seeds
from tests.helpers import TOKEN, purge, texts


def binary(bid: str, context: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Binary", "id": bid, "contentType": "text/plain", "data": "c2VjcmV0"}
    if context:
        body["securityContext"] = {"reference": context}
    return body


def document(did: str, patient: str, url: str) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "id": did, "status": "current", "subject": seeds.ref("Patient", patient),
            "content": [{"attachment": {"contentType": "text/plain", "url": url}}]}


def version_of(base: str, rtype: str, rid: str) -> str:
    return str(httpx.get(f"{base}/{rtype}/{rid}", headers=seeds.FHIR).json()["meta"]["versionId"])


def delete_directly(base: str, keys: list[tuple[str, str]]) -> None:
    """A soft delete on the upstream itself, before any purge (as an application would)."""
    for rtype, rid in keys:
        assert httpx.delete(f"{base}/{rtype}/{rid}", headers=seeds.FHIR).status_code in (200, 204)


def document_seed(base: str) -> tuple[seeds.Seed, dict[str, list[tuple[str, str]]]]:
    """The patient's documents point at Binaries in every way FHIR allows; the control's too."""
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    tag, p, c = seed.patient[:-2], seed.patient, seed.control
    b = lambda n: f"{tag}-{n}"  # noqa: E731
    mine = [binary(b("b1"), f"Patient/{p}"), binary(b("b2")), binary(b("b3")), binary(b("b4")), binary(b("b5")),
            binary(b("b6"), f"Patient/{p}")]  # b6: nothing references it, only its securityContext
    holders = [
        document(b("doc1"), p, f"Binary/{b('b1')}"),
        document(b("doc2"), p, f"{base}/Binary/{b('b2')}"),
        {"resourceType": "DiagnosticReport", "id": b("drf"), "status": "final", "code": {"text": "letter"},
         "subject": seeds.ref("Patient", p), "presentedForm": [{"contentType": "text/plain", "url": f"Binary/{b('b3')}"}]},
        {"resourceType": "Media", "id": b("media"), "status": "completed", "subject": seeds.ref("Patient", p),
         "content": {"contentType": "text/plain", "url": f"Binary/{b('b4')}"}},
        {"resourceType": "Communication", "id": b("comm"), "status": "completed", "subject": seeds.ref("Patient", p),
         "payload": [{"contentAttachment": {"contentType": "text/plain", "url": f"Binary/{b('b5')}"}}]},
        document(b("doc3"), p, f"Binary/{b('bshared')}"),  # a Binary whose securityContext is the control
        document(b("doc4"), p, f"Binary/{b('b7')}"),  # ... and one whose securityContext is its document
    ]
    holders.append(binary(b("b7"), f"DocumentReference/{b('doc4')}"))
    control = [binary(b("cb1"), f"Patient/{c}"), binary(b("cb2"), f"Patient/{c}"), binary(b("bshared"), f"Patient/{c}"),
               binary(b("loose")), document(b("cdoc"), c, f"Binary/{b('cb1')}")]
    for resource in mine + holders:
        seed.add(resource, True)
    for resource in control:
        seed.add(resource, False)
    groups = {"found by reference": [("Binary", b(n)) for n in ("b1", "b2", "b3", "b4", "b5", "b7")],
              "by securityContext only": [("Binary", b("b6"))],
              "shared": [("Binary", b("bshared"))]}
    return seed, groups


async def test_document_bytes_are_purged_with_their_documents(proxy, upstream) -> None:
    kind, base = upstream
    seed, binaries = document_seed(base)
    seeds.write(base, seed.resources)
    before = seeds.snapshot(base, seed.untouchable)

    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    assert status == 200 and "Binary: " in texts(plan)
    assert seeds.present(base, seed.in_scope) == seed.in_scope

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200 and outcome["issue"][0]["code"] == "success", report
    assert seeds.present(base, binaries["found by reference"]) == []
    shared = binaries["shared"][0]
    assert f"kept (shared): Binary/{shared[1]}: its securityContext is Patient/{seed.control}" in report
    assert seeds.snapshot(base, seed.untouchable) == before  # control documents and Binaries untouched
    lone = binaries["by securityContext only"]
    if kind == "hapi":  # Binary?_security-context works there, strictly: the lone Binary is found
        assert seeds.present(base, lone) == []
        assert seeds.present(base, seed.in_scope) == []
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/Binary/{lone[0][1]}/_history")).status_code == 404
    else:  # the engine answers any Binary search with nothing: it cannot be found, and it says so
        assert seeds.present(base, lone) == lone
        assert "could not be searched" in report and f"securityContext is Patient/{seed.patient}" in report
        assert seeds.present(base, [k for k in seed.in_scope if k not in lone]) == []


async def test_attachments_keep_and_guards_never_delete_more(make_proxy, upstream) -> None:
    kind, base = upstream
    seed, binaries = document_seed(base)
    seeds.write(base, seed.resources)
    found = binaries["found by reference"]

    kept = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"attachments": "keep"})
    definition = {"resourceType": "CompartmentDefinition", "code": "Patient", "status": "active", "search": True,
                  "resource": [{"code": "Observation", "param": ["subject"]}]}
    body = {"resourceType": "Parameters", "parameter": [{"name": "compartmentDefinition", "resource": definition}]}
    before = seeds.snapshot(base, seed.in_scope + seed.untouchable)
    plain = await make_proxy(base, auth={"admin_token": TOKEN})
    status, outcome = await purge(plain, seed.patient, body)  # Observations only: no document is touched
    assert status == 200 and "Binary" not in texts(outcome), texts(outcome)
    after = seeds.snapshot(base, seed.in_scope + seed.untouchable)
    assert {k: v for k, v in after.items() if k[0] != "Observation"} == \
        {k: v for k, v in before.items() if k[0] != "Observation"}

    before = seeds.snapshot(base, seed.untouchable)
    status, outcome = await purge(kept, seed.patient)
    report = texts(outcome)
    assert all(f"kept (purge.attachments is 'keep'): Binary/{i}" in report for _, i in found), report
    assert seeds.present(base, found) == found
    assert seeds.snapshot(base, seed.untouchable) == before

    seed, binaries = document_seed(base)  # afresh: the documents pointing at them are gone now
    seeds.write(base, seed.resources)
    found = binaries["found by reference"]
    greedy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"shared": "delete"})
    status, outcome = await purge(greedy, seed.patient)
    report = texts(outcome)
    assert seeds.present(base, found) == []
    assert f"deleted (shared): Binary/{binaries['shared'][0][1]}" in report  # the policy said so
    control = [k for k in seed.untouchable if k != binaries["shared"][0]]
    assert seeds.present(base, control) == control  # but nothing of the control's own


async def test_history_of_resources_deleted_before_the_purge(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 3, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    mine = [k for k in seed.in_scope if k[0] in ("Observation", "Condition")][:3]
    theirs = [k for k in seed.untouchable if k[0] == "Condition"][:2]  # nothing references them
    delete_directly(base, mine + theirs)
    before = seeds.snapshot(base, seed.untouchable)  # the control's deleted history included

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200 and outcome["issue"][0]["code"] == "success", report
    assert seeds.snapshot(base, seed.untouchable) == before
    if kind == "hapi":
        assert "history of resource(s) deleted before this purge removed with HAPI $expunge" in report
        async with httpx.AsyncClient() as http:
            for rtype, rid in mine:
                assert (await http.get(f"{base}/{rtype}/{rid}/_history")).status_code == 404
    else:  # no history since a time to list: said, not silent
        assert "deleted before this purge could not be searched on this upstream" in report
        assert f"history of Patient/{seed.patient} may remain" in report


@pytest.mark.hapi
async def test_earlier_deleted_history_guards(make_proxy, hapi_base) -> None:
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 2}, shared=False)
    tag = seed.patient[:-2]
    both = {"resourceType": "Observation", "id": f"{tag}-both", "status": "final", "code": {"text": "x"},
            "subject": seeds.ref("Patient", seed.patient), "performer": [seeds.ref("Patient", seed.control)]}
    seeds.write(base, seed.resources + [both])
    conditions = [k for k in seed.in_scope if k[0] == "Condition"]
    delete_directly(base, conditions + [("Observation", both["id"])])
    keep = seeds.snapshot(base, conditions + [("Observation", both["id"])] + seed.untouchable)

    definition = {"resourceType": "CompartmentDefinition", "code": "Patient", "status": "active", "search": True,
                  "resource": [{"code": "Observation", "param": ["subject", "performer"]}]}
    body = {"resourceType": "Parameters", "parameter": [{"name": "compartmentDefinition", "resource": definition}]}
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    status, outcome = await purge(proxy, seed.patient, body)
    report = texts(outcome)
    assert f"kept (shared with Patient/{seed.control}): history of resource(s) deleted before this purge: " \
           f"Observation/{both['id']}" in report
    assert seeds.snapshot(base, list(keep)) == keep  # Conditions are outside this definition; both is shared


@pytest.mark.hapi
async def test_a_resource_deleted_before_the_purge_then_written_again_is_left_alone(make_proxy, hapi_base) -> None:
    """The history scan judges a deleted resource by its history alone: a version written after
    its DELETE means it lives again (here as the control patient's), and it is left, history and
    all, to the compartment searches; the other resource deleted before the purge is expunged."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    moved, earlier = [k for k in seed.in_scope if k[0] == "Condition"]
    delete_directly(base, [moved, earlier])
    again = {"resourceType": "Condition", "id": moved[1], "code": {"text": "written again"},
             "subject": seeds.ref("Patient", seed.control)}
    assert httpx.put(f"{base}/Condition/{moved[1]}", json=again, headers=seeds.FHIR).status_code in (200, 201)
    keep = seeds.snapshot(base, [moved] + seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200 and outcome["issue"][0]["code"] == "success", report
    assert seeds.snapshot(base, list(keep)) == keep
    assert f"Condition/{earlier[1]}" in report and f"Condition/{moved[1]}" not in report
    assert httpx.get(f"{base}/Condition/{earlier[1]}/_history").status_code == 404


@pytest.mark.hapi
async def test_a_resource_moved_to_another_patient_then_deleted_keeps_its_history(make_proxy, hapi_base) -> None:
    """One of the patient's Conditions was moved to the control patient, then deleted, before the
    purge: its history holds the control's version too, so it is shared, and kept by default
    (an ``$expunge`` would take the control's data with the patient's)."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    moved, earlier = [k for k in seed.in_scope if k[0] == "Condition"]
    theirs = {"resourceType": "Condition", "id": moved[1], "code": {"text": "the control's now"},
              "subject": seeds.ref("Patient", seed.control)}
    assert httpx.put(f"{base}/Condition/{moved[1]}", json=theirs, headers=seeds.FHIR).status_code == 200
    delete_directly(base, [moved, earlier])
    keep = seeds.snapshot(base, [moved] + seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"hard_delete": "require"})

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200, report
    assert f"kept (shared with Patient/{seed.control}): history of resource(s) deleted before this purge: " \
           f"Condition/{moved[1]}" in report
    assert seeds.snapshot(base, list(keep)) == keep
    assert httpx.get(f"{base}/Condition/{earlier[1]}/_history").status_code == 404


@pytest.mark.hapi
async def test_a_bounded_history_listing_says_back_to_when_it_searched(make_proxy, hapi_base) -> None:
    """``purge.earlier_deleted_max_entries``: the newest changes only are listed. A resource deleted
    after the other writes is found and expunged; one deleted before them is not searched, and
    the outcome says so (back to when) rather than staying silent while its history remains."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    older, newer = [k for k in seed.in_scope if k[0] == "Condition"]
    delete_directly(base, [older])
    others = [{"resourceType": "Patient", "id": f"{seed.patient[:-2]}-busy{i}"} for i in range(12)]
    seeds.write(base, others)
    delete_directly(base, [newer])
    keep = seeds.snapshot(base, seed.untouchable + [("Patient", p["id"]) for p in others])
    proxy = await make_proxy(base, auth={"admin_token": TOKEN},
                             purge={"earlier_deleted_max_entries": 10, "page_size": 5})

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200, report
    assert "deleted before this purge was searched back to" in report
    assert re.search(r"searched back to \d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d) only", report), report
    assert f"history of Patient/{seed.patient} deleted before then may remain" in report
    assert f"Condition/{newer[1]}" in report and f"Condition/{older[1]}" not in report
    assert httpx.get(f"{base}/Condition/{newer[1]}/_history").status_code == 404
    assert httpx.get(f"{base}/Condition/{older[1]}/_history").status_code == 200  # outside the bound
    assert seeds.snapshot(base, list(keep)) == keep


@pytest.mark.hapi
async def test_the_history_scan_beside_the_deletes_tells_earlier_deletes_from_its_own(make_proxy, hapi_base) -> None:
    """The system history is listed while the purge deletes (small pages and batches make them
    overlap): the purge's own DELETEs must not be reported as deleted before it. On HAPI the
    listing ends at the upstream's clock when it starts (``_at`` window); the proxy also skips
    every DELETE it sent itself, for upstreams that take no window."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 60, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    earlier = [k for k in seed.in_scope if k[0] == "Condition"]
    delete_directly(base, earlier)
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN},
                             purge={"hard_delete": "never", "page_size": 5, "batch_size": 5})

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    line = next(t for t in report.splitlines() if "deleted before this purge remains readable" in t)
    assert line.endswith(": " + ", ".join(f"{t}/{i}" for t, i in sorted(earlier))), line
    assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, seed.untouchable) == before


@pytest.mark.hapi
async def test_a_hard_purge_beside_its_history_listing_still_finds_earlier_deletes(make_proxy, hapi_base) -> None:
    """With a hard delete the transactions start beside the system-history listing; the
    resources deleted before the purge are listed behind 60 of the patient's own later writes,
    which the purge deletes and expunges (small pages and batches make them overlap), and must
    still be found and expunged. No ``$expunge`` goes before the listing ends (shown by
    tests/test_deletion_versions.py): an expunge does move the entries of HAPI's history pages
    (tests/test_purge_engine.py::test_an_expunge_beside_the_listing_cannot_hide_an_earlier_delete,
    whose listing finds its place again), and this test passes without that wait too."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    earlier = [k for k in seed.in_scope if k[0] == "Condition"]
    delete_directly(base, earlier)
    later = [{"resourceType": "Observation", "id": f"{seed.patient[:-2]}-later{i}", "status": "final",
              "code": {"text": "x"}, "subject": seeds.ref("Patient", seed.patient)} for i in range(60)]
    seeds.write(base, later)
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"page_size": 5, "batch_size": 5})

    status, outcome = await purge(proxy, seed.patient)
    report = texts(outcome)
    assert status == 200 and outcome["issue"][0]["code"] == "success", report
    line = next(t for t in report.splitlines() if "deleted before this purge removed with" in t)
    assert line.endswith(": " + ", ".join(f"{t}/{i}" for t, i in sorted(earlier))), line
    async with httpx.AsyncClient() as http:
        for rtype, rid in earlier:
            assert (await http.get(f"{base}/{rtype}/{rid}/_history")).status_code == 404
    assert seeds.snapshot(base, seed.untouchable) == before


async def test_every_reference_form_the_proxy_counts_is_searched(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    seeds.write(base, seed.resources)
    tag, p, c = seed.patient[:-2], seed.patient, seed.control
    pv, cv = version_of(base, "Patient", p), version_of(base, "Patient", c)

    def obs(oid: str, reference: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": f"{tag}-{oid}", "status": "final", "code": {"text": "f"},
                "subject": {"reference": reference}}

    extra = [(obs("ver", f"Patient/{p}/_history/{pv}"), True), (obs("cver", f"Patient/{c}/_history/{cv}"), False)]
    if kind == "medplum":  # HAPI refuses to store absolute references, even to its own base
        extra += [(obs("abs", f"{base}/Patient/{p}"), True), (obs("absver", f"{base}/Patient/{p}/_history/{pv}"), True),
                  (obs("cabs", f"{base}/Patient/{c}"), False),
                  (obs("far", f"http://elsewhere.example/fhir/Patient/{p}"), False)]
    for resource, in_scope in extra:
        seed.add(resource, in_scope)
    seeds.write(base, [r for r, _ in extra])
    before = seeds.snapshot(base, seed.untouchable)

    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, seed.untouchable) == before


def test_attachment_urls_are_references_to_local_binaries_only() -> None:
    from purgeproxy.fhir.references import all_references, reference_forms

    base = "http://up.test/fhir"
    resource = {"resourceType": "DocumentReference", "id": "d", "content": [
        {"attachment": {"contentType": "text/plain", "url": "Binary/a"}},
        {"attachment": {"url": f"{base}/Binary/b/_history/2", "title": "t"}},
        {"attachment": {"url": "http://elsewhere.test/fhir/Binary/c"}},  # another server's
        {"attachment": {"url": "Observation/d"}},  # not a Binary
    ], "extension": [{"url": "Binary/e", "valueString": "x"}]}  # an extension, not an Attachment
    assert sorted(all_references(resource, base)) == [("Binary", "a"), ("Binary", "b")]
    assert reference_forms(("Patient", "p"), base, ["1", "bad/id"]) == [
        "Patient/p", f"{base}/Patient/p", "Patient/p/_history/1", f"{base}/Patient/p/_history/1"]


@pytest.mark.hapi
async def test_a_patient_deleted_before_the_purge_is_expunged_with_its_resources(make_proxy, hapi_base) -> None:
    """A half-done manual erasure: every resource and the Patient soft-deleted, history all there."""
    base = hapi_base
    seed = seeds.build(sizes={"Observation": 2, "Condition": 1}, shared=False)
    seeds.write(base, seed.resources)
    mine = [k for k in seed.in_scope if k[0] != "Patient"]
    delete_directly(base, mine + [("Patient", seed.patient)])
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})

    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    assert "would be removed with HAPI $expunge" in texts(plan) and f"Patient/{seed.patient}" in texts(plan)
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    async with httpx.AsyncClient() as http:
        for rtype, rid in seed.in_scope:
            assert (await http.get(f"{base}/{rtype}/{rid}/_history")).status_code == 404, (rtype, rid)
    assert seeds.snapshot(base, seed.untouchable) == before


def listing_of(entries: list[dict[str, Any]], from_patient: bool = True, ours: str = "") -> Any:
    """A ``Listing`` of the system history for Patient/p that has taken ``entries``."""
    import asyncio

    from purgeproxy.engine.compartment import Resolver
    from purgeproxy.engine.deleted_history import Listing
    from purgeproxy.fhir.client import FhirClient
    from purgeproxy.fhir.definitions import definitions_for

    definitions = definitions_for("4.0.1")
    base = "http://up.test/fhir"
    resolver = Resolver(FhirClient(base, httpx.AsyncClient()), definitions,
                        dict(definitions.patient_compartment), 10, asyncio.Semaphore(1))
    listing = Listing(("Patient", "p"), resolver, lambda key: key == ("Observation", ours), base,
                      "2026-01-01T00:00:00Z", from_patient=from_patient)
    for entry in entries:
        listing.take(entry)
    return listing


def version(oid: str, n: int, patient: str) -> dict[str, Any]:
    """A history entry: version ``n`` of Observation/``oid``, about Patient/``patient``."""
    return {"request": {"method": "PUT", "url": f"Observation/{oid}/_history/{n}"},
            "resource": {"resourceType": "Observation", "id": oid, "meta": {"versionId": str(n)},
                         "status": "final", "code": {"text": "x"}, "subject": {"reference": f"Patient/{patient}"}}}


def deleted(oid: str, url_version: str) -> dict[str, Any]:
    """A history entry: the DELETE of Observation/``oid`` (``url_version``: "/_history/N" or "")."""
    return {"request": {"method": "DELETE", "url": f"Observation/{oid}{url_version}"}}


@pytest.mark.parametrize(("stopped", "from_patient"), [(False, True), (True, True), (False, False)],
                         ids=["whole", "stopped-at-its-bound", "the-changes-made-during-the-purge"])
def test_the_history_listing_clears_only_deletes_whose_listed_versions_prove_them_not_the_patients(
        stopped, from_patient) -> None:
    """A resource deleted since the patient was created needs no reads when none of its listed
    versions references the patient, whatever the order they come in, and they run unbroken up
    to its DELETE: from version 1, or, when the listing holds every change since the patient
    was created, from any version (the ones before are older than the patient). Anything else
    (a version missing in between, one that references the patient, an unnumbered DELETE, the
    listing stopped at its bound or holding only the changes made during the purge, and version
    1 not in it) is read."""
    entries = [deleted("other", "/_history/3"), version("other", 2, "q"), version("other", 1, "q"),
               deleted("gap", "/_history/3"), version("gap", 1, "q"),  # version 2 not listed
               deleted("mine", "/_history/3"), version("mine", 2, "q"), version("mine", 1, "p"),
               deleted("bare", ""), version("bare", 1, "q"),  # DELETE without its version
               version("early", 1, "q"), deleted("early", "/_history/2"),  # oldest first
               version("late", 1, "p"), deleted("late", "/_history/2"),  # oldest first, the patient's
               deleted("older", "/_history/2"),  # version 1 not listed: older than the patient
               deleted("since2", "/_history/3"), version("since2", 2, "q"),  # version 1 older
               deleted("ours", "/_history/2"), version("ours", 1, "p")]
    listing = listing_of(entries, from_patient, ours="ours")
    listing.stopped_at = "2026-01-01T00:00:00Z" if stopped else None
    assert listing.deleted == {("Observation", i) for i in
                               ("other", "gap", "mine", "bare", "early", "late", "older", "since2")}
    cleared = ["other", "early"] if stopped or not from_patient else ["other", "early", "older", "since2"]
    assert listing.cleared() == {("Observation", i) for i in cleared}


@pytest.mark.parametrize(("first_is", "cleared"), [
    ("whole", ["seen", "new"]), ("past-what-it-keeps", ["new"]), ("not-given", ["new"])])
def test_the_changes_made_during_the_purge_are_cleared_with_the_versions_the_first_listing_kept(
        first_is, cleared, monkeypatch) -> None:
    """Beside a cohort's purges, what another member deletes during this one's purge is in the
    second listing, its versions mostly in the first (written after this patient, still live
    then). Such a candidate needs no reads when the two list its every version from 1 and none
    references the patient; one missing in between, or in neither (it may have been written
    after the patient and committed late), and it is read. Past the resources whose versions it
    keeps (``MAX_KEPT``), the first listing keeps no more, and their candidates are read."""
    import purgeproxy.engine.deleted_history as history

    monkeypatch.setattr(history, "MAX_KEPT", 3 if first_is == "past-what-it-keeps" else history.MAX_KEPT)
    first = listing_of([version("gapped", 1, "q"), version("touched", 1, "p"), version("late", 1, "q"),
                        version("seen", 1, "q")])
    assert (("Observation", "seen") in first.versions) == (first_is != "past-what-it-keeps")
    second = listing_of([deleted("seen", "/_history/2"), deleted("touched", "/_history/2"),
                         deleted("unseen", "/_history/3"),  # versions in neither listing
                         deleted("gapped", "/_history/4"), version("gapped", 3, "q"),  # version 2 missing
                         deleted("new", "/_history/2"), version("new", 1, "q"),  # listed whole here
                         deleted("bare", "")], from_patient=False)
    assert second.cleared(None if first_is == "not-given" else first) == {("Observation", i) for i in cleared}


def test_a_resource_written_past_the_versions_kept_is_read() -> None:
    """Versions are kept as the bits of one int: one past ``MAX_VERSION`` (a resource written that
    often, or an upstream's odd number) leaves the resource to be read, as does such a DELETE."""
    from purgeproxy.engine.deleted_history import MAX_VERSION

    past = MAX_VERSION + 1
    listing = listing_of([deleted("often", f"/_history/{past + 1}"), *[version("often", n, "q") for n in range(1, past + 1)],
                          deleted("odd", "/_history/2"), version("odd", 1, "q"), version("odd", 10 ** 12, "q"),
                          deleted("fine", "/_history/2"), version("fine", 1, "q")])
    assert listing.cleared() == {("Observation", "fine")}


@pytest.mark.parametrize("entry", ["DELETE", {"request": "DELETE"}, {"request": {"method": "PUT"}},
                                   {"resource": {"resourceType": "Observation", "meta": {"versionId": "1"}}}],
                         ids=["not-an-object", "request-not-an-object", "no-resource", "resource-without-id"])
def test_a_history_entry_that_is_neither_a_version_nor_a_delete_stops_the_listing(entry) -> None:
    """An entry the listing cannot read may be a DELETE of the patient's: passing over it would
    leave that history unsaid. The listing stops instead (the outcome says such history may
    remain); an entry whose ``meta`` is not an object is still a version, of no known number."""
    from purgeproxy.fhir.search import ResolutionError

    listing = listing_of([])
    listing.take({"request": {"method": "DELETE", "url": "Observation/o1/_history/2"}})
    listing.take({"resource": {"resourceType": "Observation", "id": "o1", "meta": ["1"]}})
    assert listing.deleted == {("Observation", "o1")} and listing.versions == {}
    with pytest.raises(ResolutionError, match="neither a version of a resource nor a DELETE"):
        listing.take(entry)


def test_a_history_shows_its_resource_still_deleted_only_when_it_can_tell() -> None:
    """No version after the DELETE the listing saw: still deleted; a later one: written again;
    no DELETE version, or a version that is not a number: unknown, so the resource is read."""
    from purgeproxy.engine.deleted_history import _still_deleted

    def versions(*numbers: str) -> list[dict[str, Any]]:
        return [{"resourceType": "Observation", "id": "o", "meta": {"versionId": n}} for n in numbers]

    assert _still_deleted(versions("2", "1"), 3) is True
    assert _still_deleted(None, 3) is True  # the history itself is gone
    assert _still_deleted(versions("4", "2", "1"), 3) is False
    assert _still_deleted(versions("2", "1"), None) is None
    assert _still_deleted(versions("2", "b7"), 3) is None
