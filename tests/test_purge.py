"""Patient ``$purge`` against real upstreams: everything in scope goes, nothing else moves."""

from __future__ import annotations

import httpx

from tests import seed as seeds
from tests.helpers import TOKEN, assert_kept_referrer_reported, purge, texts


async def test_purge_removes_the_compartment_and_nothing_else(proxy, upstream) -> None:
    base = upstream[1]
    seed = seeds.build(shared=False)
    seeds.write(base, seed.resources)
    before = seeds.snapshot(base, seed.untouchable)

    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    assert status == 200 and plan["issue"][0]["code"] == "informational"
    assert f"{len(seed.in_scope)} resource(s)" in plan["issue"][0]["diagnostics"]
    assert seeds.present(base, seed.in_scope) == seed.in_scope  # the dry run deleted nothing

    status, outcome = await purge(proxy, seed.patient)
    assert status == 200
    assert outcome["issue"][0]["code"] == "success", texts(outcome)
    assert "Observation: 200 deleted" in texts(outcome)
    assert seeds.present(base, seed.in_scope) == []
    assert seeds.snapshot(base, seed.untouchable) == before  # byte-identical
    assert f"Group/{seed.patient}" not in texts(outcome)  # the same-id Group is not this patient
    if upstream[0] == "medplum":  # no hard delete: a sample of histories is read back
        assert f"serves no history for a sample of 25 of the {len(seed.in_scope)} deleted" in texts(outcome)
    if upstream[0] == "hapi":  # a hard delete: history is gone too, and every one is checked
        method = "HAPI $expunge (expungeDeletedResources)"
        assert f"history removed with {method} for {len(seed.in_scope)}" in texts(outcome)
        async with httpx.AsyncClient() as http:
            history = await http.get(f"{base}/Patient/{seed.patient}/_history")
        assert history.status_code == 404


async def test_shared_resources_are_kept_and_reported(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 4})
    seeds.write(base, seed.resources)
    before = seeds.snapshot(base, seed.untouchable)
    status, outcome = await purge(proxy, seed.patient)
    tag = seed.patient[:-2]
    report = texts(outcome)
    assert f"kept (shared): Group/{tag}-shared is also in the compartment of Patient/{seed.control}" in report
    assert f"kept (shared): Coverage/{tag}-cov is also in the compartment of Patient/{seed.control}" in report
    assert f"Group/{tag}-shared is kept and still references Patient/{seed.patient}" in report
    assert seeds.snapshot(base, seed.untouchable) == before
    assert seeds.present(base, [k for k in seed.in_scope if k[0] == "Observation"]) == []
    if kind == "hapi":  # referential integrity: the kept resources block deleting the Patient
        assert outcome["issue"][0]["code"] == "incomplete"
        assert f"Patient/{seed.patient} was not deleted: still referenced by" in report
        assert seeds.present(base, [("Patient", seed.patient)]) == [("Patient", seed.patient)]
    else:
        assert outcome["issue"][0]["code"] == "success", report


async def test_purge_is_idempotent_and_unknown_patients_are_fine(proxy, upstream) -> None:
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(upstream[1], seed.resources)
    assert (await purge(proxy, seed.patient))[1]["issue"][0]["code"] == "success"
    status, again = await purge(proxy, seed.patient)
    assert status == 200 and again["issue"][0]["code"] == "success"
    assert "(0 deleted)" in again["issue"][0]["diagnostics"]
    status, unknown = await purge(proxy, "never-existed-42")
    assert status == 200 and unknown["issue"][0]["code"] == "success"


async def test_custom_compartment_limits_the_scope(proxy, upstream) -> None:
    base = upstream[1]
    seed = seeds.build(sizes={"Observation": 5, "Condition": 4}, shared=False)
    seeds.write(base, seed.resources)
    definition = {"resourceType": "CompartmentDefinition", "code": "Patient", "status": "active",
                  "search": True, "resource": [{"code": "Observation", "param": ["subject"]}]}
    body = {"resourceType": "Parameters", "parameter": [{"name": "compartmentDefinition", "resource": definition}]}
    status, outcome = await purge(proxy, seed.patient, body)
    assert status == 200 and "Observation: 5 deleted" in texts(outcome)
    observations = [k for k in seed.in_scope if k[0] == "Observation"]
    others = [k for k in seed.in_scope if k[0] != "Observation"]
    assert seeds.present(base, observations) == []
    assert seeds.present(base, others) == others  # Conditions and the Patient itself stay


async def test_excluded_provenance_is_kept_and_reported(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    provenance = {"resourceType": "Provenance", "id": f"{seed.patient}-prov", "recorded": "2024-01-01T00:00:00Z",
                  "agent": [{"who": {"display": "clinic"}}], "target": [seeds.ref("Patient", seed.patient)]}
    seeds.write(base, seed.resources + [provenance])
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200
    assert f"kept (excluded type Provenance): Provenance/{seed.patient}-prov" in texts(outcome)
    assert seeds.present(base, [("Provenance", provenance["id"])]) == [("Provenance", provenance["id"])]
    assert_kept_referrer_reported(outcome, kind, seed.patient, f"Provenance/{seed.patient}-prov")


async def test_shared_resources_can_be_deleted_by_policy(make_proxy, upstream) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"shared": "delete"})
    seed = seeds.build(sizes={"Observation": 1})
    seeds.write(base, seed.resources)
    status, outcome = await purge(proxy, seed.patient)
    tag = seed.patient[:-2]
    assert f"deleted (shared): Group/{tag}-shared" in texts(outcome)
    assert seeds.present(base, [("Group", f"{tag}-shared"), ("Coverage", f"{tag}-cov")]) == []
    assert seeds.present(base, [("Patient", seed.control)]) == [("Patient", seed.control)]


async def test_resources_outside_the_compartment_citing_the_patient_are_listed(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    outside = {"resourceType": "Observation", "id": f"{seed.patient}-about", "status": "final",
               "code": {"text": "family history"}, "subject": seeds.ref("Patient", seed.control),
               "focus": [seeds.ref("Patient", seed.patient)]}  # focus is not a compartment param
    seeds.write(base, seed.resources + [outside])
    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    listed = f"Observation/{outside['id']} is outside the compartment and still references Patient/{seed.patient}"
    assert listed in texts(plan)
    status, outcome = await purge(proxy, seed.patient)
    assert listed in texts(outcome)
    assert seeds.present(base, [("Observation", outside["id"])]) == [("Observation", outside["id"])]
    if kind == "hapi":  # it blocks deleting the Patient there
        assert f"Patient/{seed.patient} was not deleted: still referenced by Observation/{outside['id']}" in texts(outcome)
    else:
        assert outcome["issue"][0]["code"] == "success", texts(outcome)
