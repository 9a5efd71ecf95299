"""Exact scope against real upstreams: whose data a resource is, judged the same way by every
operation, whatever definition or policy selected it.

Each trap has a control patient (and, where there is one, the other patient) whose resources are
compared byte for byte, ``_history`` included, before and after.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from purgeproxy.config import ConfigError, parse_config
from tests import seed as seeds
from tests.helpers import AUTH, TOKEN, assert_kept_referrer_reported, purge, texts
from tests.seed import ref


def definition(*entries: tuple[str, list[str]]) -> dict[str, Any]:
    """A ``Parameters`` body carrying a contained CompartmentDefinition with these entries."""
    resource = {"resourceType": "CompartmentDefinition", "code": "Patient", "status": "active", "search": True,
                "resource": [{"code": rtype, "param": params} for rtype, params in entries]}
    return {"resourceType": "Parameters", "parameter": [{"name": "compartmentDefinition", "resource": resource}]}


def observation(oid: str, **references: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"}, **references}


def survivor(seed: seeds.Seed) -> tuple[dict[str, Any], dict[str, Any]]:
    """A merge survivor: another patient whose ``link.other`` points at the purged one, and its own data."""
    tag = seed.patient[:-2]
    patient = {"resourceType": "Patient", "id": f"{tag}-s", "name": [{"family": "Survivor"}],
               "link": [{"other": ref("Patient", seed.patient), "type": "replaces"}]}
    return patient, observation(f"{tag}-sobs", subject=ref("Patient", f"{tag}-s"))


async def delete(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=300) as http:
        answer = await http.delete(url, headers=AUTH)
    return answer.status_code, answer.json()


# --- shared: judged against the server's full Patient compartment -----------------------------

@pytest.mark.parametrize("shared", ["keep", "delete"])
async def test_a_narrow_definition_does_not_make_shared_data_look_private(make_proxy, upstream, shared) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge={"shared": shared})
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    both = observation(f"{seed.patient}-perf", subject=ref("Patient", seed.patient),
                       performer=[ref("Patient", seed.control)])
    seeds.write(base, seed.resources + [both])
    key = ("Observation", both["id"])
    watched = seed.untouchable + ([key] if shared == "keep" else [])
    before = seeds.snapshot(base, watched)

    status, outcome = await purge(proxy, seed.patient, definition(("Observation", ["subject"])))
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    verb = "kept" if shared == "keep" else "deleted"
    assert f"{verb} (shared): Observation/{both['id']} is also in the compartment of Patient/{seed.control}" in texts(outcome)
    assert seeds.present(base, [key]) == ([key] if shared == "keep" else [])
    own = [k for k in seed.in_scope if k[0] == "Observation"]
    assert seeds.present(base, own) == []
    assert seeds.snapshot(base, watched) == before  # the control patient, byte-identical with history


# --- another patient's own record -------------------------------------------------------------

POLICIES = {
    "default": ({}, None),
    "shared-delete": ({"shared": "delete"}, None),
    "shared-delete-custom": ({"shared": "delete"}, definition(("Patient", ["link"]), ("Observation", ["subject"]))),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
async def test_another_patients_record_is_never_deleted_by_a_purge(make_proxy, upstream, policy) -> None:
    kind, base = upstream
    settings, body = POLICIES[policy]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, purge=settings)
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    other, its_data = survivor(seed)
    seeds.write(base, seed.resources + [other, its_data])
    watched = seed.untouchable + [("Patient", other["id"]), ("Observation", its_data["id"])]
    before = seeds.snapshot(base, watched)

    status, plan = await purge(proxy, seed.patient, body, query="?dryRun=true")
    assert status == 200
    listed = (f"kept (another patient's own record): Patient/{other['id']} references Patient/{seed.patient} "
              "through link; a purge never deletes another patient's record")
    assert listed in texts(plan)
    assert f"Patient/{other['id']}" not in plan["issue"][0]["diagnostics"]

    status, outcome = await purge(proxy, seed.patient, body)
    assert status == 200 and listed in texts(outcome)
    assert f"deleted (shared): Patient/{other['id']}" not in texts(outcome)
    assert seeds.snapshot(base, watched) == before
    assert seeds.present(base, [k for k in seed.in_scope if k[0] == "Observation"]) == []
    assert_kept_referrer_reported(outcome, kind, seed.patient, f"Patient/{other['id']}")


# --- cascading delete that would reach another patient ----------------------------------------

async def test_a_cascade_reaching_another_patient_is_refused_unless_confirmed(make_proxy, upstream) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    other, its_data = survivor(seed)
    seeds.write(base, seed.resources + [other, its_data])
    everything = seed.untouchable + seed.in_scope + [("Patient", other["id"]), ("Observation", its_data["id"])]
    before = seeds.snapshot(base, everything)
    url = f"{proxy}/Patient/{seed.patient}?_cascade=delete"

    status, plan = await delete(url + "&_dryRun=true")
    assert status == 200, plan
    named = f"Patient/{other['id']} (another patient's own record)"
    assert named in texts(plan)
    status, refused = await delete(url)
    assert status == 422 and refused["issue"][0]["code"] == "business-rule", refused
    assert named in texts(refused) and "_confirm=true" in texts(refused)
    assert seeds.snapshot(base, everything) == before  # nothing deleted

    status, outcome = await delete(url + "&_confirm=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    gone = [("Patient", seed.patient), ("Patient", other["id"]), ("Observation", its_data["id"])]
    assert seeds.present(base, gone) == []
    assert seeds.snapshot(base, seed.untouchable) == {k: before[k] for k in seed.untouchable}


async def test_a_cascade_reaching_shared_data_is_refused_and_names_the_other_patient(make_proxy, upstream) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    seed = seeds.build(sizes={"Observation": 1}, shared=False)
    both = observation(f"{seed.patient}-perf", subject=ref("Patient", seed.patient),
                       performer=[ref("Patient", seed.control)])
    seeds.write(base, seed.resources + [both])
    everything = seed.untouchable + seed.in_scope + [("Observation", both["id"])]
    before = seeds.snapshot(base, everything)
    status, refused = await delete(f"{proxy}/Patient/{seed.patient}?_cascade=delete")
    assert status == 422, refused
    assert f"Observation/{both['id']} (also in the compartment of Patient/{seed.control})" in texts(refused)
    assert seeds.snapshot(base, everything) == before


async def test_a_cascade_of_an_organization_never_silently_deletes_its_patients(make_proxy, upstream) -> None:
    base, tag = upstream[1], seeds.new_tag()
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    organization = {"resourceType": "Organization", "id": f"{tag}-org", "name": "Clinic"}
    patient = {"resourceType": "Patient", "id": f"{tag}-p", "managingOrganization": ref("Organization", f"{tag}-org")}
    data = observation(f"{tag}-o", subject=ref("Patient", f"{tag}-p"))
    seeds.write(base, [organization, patient, data])
    everything = [("Organization", f"{tag}-org"), ("Patient", f"{tag}-p"), ("Observation", f"{tag}-o")]
    before = seeds.snapshot(base, everything)
    status, refused = await delete(f"{proxy}/Organization/{tag}-org?_cascade=delete")
    assert status == 422, refused
    assert f"Patient/{tag}-p (another patient's own record)" in texts(refused)
    assert seeds.snapshot(base, everything) == before


# --- duplicate entries in a compartmentDefinition ---------------------------------------------

async def test_duplicate_entries_for_one_type_are_merged_and_both_searched(make_proxy, upstream) -> None:
    base = upstream[1]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    seed = seeds.build(sizes={}, shared=False)
    by_subject = observation(f"{seed.patient}-subj", subject=ref("Patient", seed.patient))
    by_performer = observation(f"{seed.patient}-perf", performer=[ref("Patient", seed.patient)])
    seeds.write(base, seed.resources + [by_subject, by_performer])
    before = seeds.snapshot(base, seed.untouchable)
    body = definition(("Observation", ["subject"]), ("Observation", ["performer"]))
    status, outcome = await purge(proxy, seed.patient, body)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert "Observation: 2 deleted" in texts(outcome)
    assert seeds.present(base, [("Observation", by_subject["id"]), ("Observation", by_performer["id"])]) == []
    assert seeds.snapshot(base, seed.untouchable) == before


# --- an unknown patient -----------------------------------------------------------------------

async def test_an_unknown_patient_is_200_and_says_no_such_patient_was_found(make_proxy, upstream) -> None:
    proxy = await make_proxy(upstream[1], auth={"admin_token": TOKEN})
    missing = f"{seeds.new_tag()}-typo"
    for query in ("?dryRun=true", ""):
        status, outcome = await purge(proxy, missing, query=query)
        assert status == 200 and outcome["issue"][0]["code"] in ("success", "informational"), outcome
        assert f"no Patient/{missing} was found" in outcome["issue"][0]["diagnostics"]
    seed = seeds.build(sizes={"Observation": 1}, shared=False)
    seeds.write(upstream[1], seed.resources)
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and "was found" not in texts(outcome)


# --- type names in config, checked against the upstream's FHIR version -------------------------

def test_a_misspelt_excluded_type_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as mistake:
        parse_config({"upstream": {"url": "http://x/fhir"}, "purge": {"excluded_types": ["Auditevent", "Provenance"]}})
    assert str(mistake.value).startswith("purge.excluded_types")
    assert "'Auditevent' is not a FHIR resource type" in str(mistake.value)
    assert "AuditEvent" in str(mistake.value)  # the likely meant name


async def test_a_type_name_outside_the_upstreams_version_refuses_every_destructive_operation(make_proxy, upstream) -> None:
    base = upstream[1]
    # ActorDefinition is an R5 resource type; both test upstreams are R4
    proxy = await make_proxy(base, auth={"admin_token": TOKEN},
                             purge={"excluded_types": ["AuditEvent", "ActorDefinition"]})
    seed = seeds.build(sizes={"Observation": 1}, shared=False)
    seeds.write(base, seed.resources)
    everything = seed.in_scope + seed.untouchable
    before = seeds.snapshot(base, everything)
    for method, url in (("POST", f"{proxy}/Patient/{seed.patient}/$purge"),
                        ("DELETE", f"{proxy}/Patient/{seed.patient}?_cascade=delete"),
                        ("POST", f"{proxy}/Observation/{seed.patient}-obs0/$erase")):
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.request(method, url, headers=AUTH)
        assert answer.status_code == 422, (url, answer.text)
        assert "purge.excluded_types: 'ActorDefinition' is not a resource type of FHIR 4.0.1" in answer.text
    assert seeds.snapshot(base, everything) == before


def test_repeated_entries_for_a_type_merge_their_params_in_order() -> None:
    from purgeproxy.fhir.definitions import definitions_for
    from purgeproxy.operations.params import compartment_from

    body = definition(("Observation", ["subject"]), ("Condition", ["subject"]),
                      ("Observation", ["performer", "subject"]))
    parsed = compartment_from(body["parameter"][0]["resource"], definitions_for("4.0.1"))
    assert parsed == {"Observation": ("subject", "performer"), "Condition": ("subject",)}
