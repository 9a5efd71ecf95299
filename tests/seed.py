"""Patients with realistic compartments, written to a real upstream in transaction Bundles.

Ids are chosen by the test (PUT), so that a ``Group`` can carry the same id as the patient and a
control patient's resources can be snapshotted and compared byte for byte afterwards.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from purgeproxy.fhir.history import instance_history

Key = tuple[str, str]
FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def observation(oid: str, patient: str | None, text: str = "x") -> dict[str, Any]:
    """A minimal Observation of ``patient`` (None: of no one); ``text`` tells its versions apart."""
    subject = {"subject": ref("Patient", patient)} if patient is not None else {}
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": text}, **subject}


@dataclass
class Seed:
    """What was written, grouped by what a purge of ``patient`` must do with it."""

    patient: str
    control: str
    in_scope: list[Key] = field(default_factory=list)
    untouchable: list[Key] = field(default_factory=list)  # control data, traps, shared, excluded
    resources: list[dict[str, Any]] = field(default_factory=list)

    def add(self, resource: dict[str, Any], in_scope: bool) -> None:
        self.resources.append(resource)
        (self.in_scope if in_scope else self.untouchable).append((resource["resourceType"], resource["id"]))


def new_tag() -> str:
    return "t" + uuid.uuid4().hex[:12]


def clinical(seed: Seed, owner: str, prefix: str, sizes: dict[str, int], in_scope: bool) -> None:
    """Encounters, Observations linked to them, reports on those Observations, and more."""
    add = lambda r: seed.add(r, in_scope)  # noqa: E731 - tiny local shorthand
    encounters = [f"{prefix}-enc{i}" for i in range(sizes.get("Encounter", 0))]
    for eid in encounters:
        add({"resourceType": "Encounter", "id": eid, "status": "finished",
             "class": {"code": "AMB"}, "subject": ref("Patient", owner)})
    observations = [f"{prefix}-obs{i}" for i in range(sizes.get("Observation", 0))]
    for i, oid in enumerate(observations):
        obs = {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "hr"},
               "subject": ref("Patient", owner), "valueQuantity": {"value": i}}
        if encounters:
            obs["encounter"] = ref("Encounter", encounters[i % len(encounters)])
        add(obs)
    for i in range(sizes.get("DiagnosticReport", 0)):
        add({"resourceType": "DiagnosticReport", "id": f"{prefix}-dr{i}", "status": "final",
             "code": {"text": "panel"}, "subject": ref("Patient", owner),
             "result": [ref("Observation", o) for o in observations[i * 3:i * 3 + 3]]})
    simple = {
        "Condition": lambda i: {"subject": ref("Patient", owner), "code": {"text": "c"}},
        "Procedure": lambda i: {"status": "completed", "subject": ref("Patient", owner)},
        "MedicationRequest": lambda i: {"status": "active", "intent": "order", "subject": ref("Patient", owner),
                                        "medicationCodeableConcept": {"text": "m"}},
        "AllergyIntolerance": lambda i: {"patient": ref("Patient", owner)},
        "Immunization": lambda i: {"status": "completed", "patient": ref("Patient", owner),
                                   "vaccineCode": {"text": "v"}, "occurrenceDateTime": "2020-01-01"},
        "CarePlan": lambda i: {"status": "active", "intent": "plan", "subject": ref("Patient", owner)},
        "DocumentReference": lambda i: {"status": "current", "subject": ref("Patient", owner),
                                        "content": [{"attachment": {"contentType": "text/plain"}}]},
    }
    for rtype, body in simple.items():
        for i in range(sizes.get(rtype, 0)):
            add({"resourceType": rtype, "id": f"{prefix}-{rtype.lower()}{i}", **body(i)})


PATIENT_SIZES = {"Encounter": 10, "Observation": 200, "DiagnosticReport": 20, "Condition": 30,
                 "Procedure": 20, "MedicationRequest": 20, "AllergyIntolerance": 10,
                 "Immunization": 10, "CarePlan": 5, "DocumentReference": 5}
CONTROL_SIZES = {"Encounter": 2, "Observation": 20, "Condition": 5, "DiagnosticReport": 2}


def build(tag: str | None = None, sizes: dict[str, int] | None = None, shared: bool = True) -> Seed:
    """A patient with several hundred resources, a control patient, and the classic traps.

    ``shared`` adds a Group and a Coverage that belong to both patients.
    """
    tag = tag or new_tag()
    seed = Seed(patient=f"{tag}-p", control=f"{tag}-c")
    seed.add({"resourceType": "Patient", "id": seed.patient, "name": [{"family": "Purge"}]}, True)
    seed.add({"resourceType": "Patient", "id": seed.control, "name": [{"family": "Control"}]}, False)
    clinical(seed, seed.patient, f"{tag}-p", PATIENT_SIZES if sizes is None else sizes, True)
    clinical(seed, seed.control, f"{tag}-c", CONTROL_SIZES, False)
    # The trap: a Group whose id equals the patient's, and data about that Group.
    seed.add({"resourceType": "Group", "id": seed.patient, "type": "person", "actual": True,
              "member": [{"entity": ref("Patient", seed.control)}]}, False)
    for i in range(3):
        seed.add({"resourceType": "Observation", "id": f"{tag}-grpobs{i}", "status": "final",
                  "code": {"text": "g"}, "subject": ref("Group", seed.patient)}, False)
    if shared:
        add_shared(seed, tag)
    return seed


def add_shared(seed: Seed, tag: str) -> None:
    """A Group and a Coverage in both patients' compartments: kept by default."""
    seed.add({"resourceType": "Group", "id": f"{tag}-shared", "type": "person", "actual": True,
              "member": [{"entity": ref("Patient", seed.patient)}, {"entity": ref("Patient", seed.control)}]}, False)
    seed.add({"resourceType": "Coverage", "id": f"{tag}-cov", "status": "active",
              "subscriber": ref("Patient", seed.patient), "beneficiary": ref("Patient", seed.control),
              "payor": [ref("Patient", seed.control)]}, False)


def write(base: str, resources: list[dict[str, Any]], chunk: int = 50) -> None:
    """PUT every resource through transaction Bundles of 50 (Medplum's limit for updates),
    straight to the upstream; the benchmarks seed with it too."""
    with httpx.Client(timeout=600) as http:
        for start in range(0, len(resources), chunk):
            part = resources[start:start + chunk]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in part]}
            answer = http.post(base, json=bundle, headers=FHIR)
            assert answer.status_code == 200, answer.text[:2000]


def snapshot(base: str, keys: list[Key]) -> dict[Key, tuple[bytes, bytes]]:
    """The exact bytes the upstream serves for each resource (404/410 as a marker), with its
    whole ``_history``: every version's resource, in the server's order.

    A history Bundle's own id and timestamp change on every read, so the versions are compared
    as their JSON, not the Bundle's bytes (read whole: ``_history``).
    """
    with httpx.Client(timeout=60) as http:
        result = {}
        for rtype, rid in keys:
            answer = http.get(f"{base}/{rtype}/{rid}", headers={"Accept": "application/fhir+json"})
            current = answer.content if answer.status_code == 200 else str(answer.status_code).encode()
            status, versions = _history(http, base, (rtype, rid))
            result[(rtype, rid)] = (current, json.dumps(versions, sort_keys=True).encode() if status == 200
                                    else str(status).encode())
        return result


def history_size(base: str, key: Key) -> int:
    """How many entries ``key``'s whole history lists (deletions included); 0 when gone."""
    with httpx.Client(timeout=60) as http:
        status, versions = _history(http, base, key)
    return len(versions) if status == 200 else 0


def _history(http: httpx.Client, base: str, key: Key) -> tuple[int, list[Any]]:
    """The status of ``key``'s history and its every entry as (resource, method), every page read,
    asked as the proxy asks it (``instance_history``): HAPI lists a history asked without
    ``_since`` only as far as it counted it up to a minute before."""
    versions: list[Any] = []
    url = f"{base}/{instance_history(key)}"
    while url:
        answer = http.get(url, headers={"Accept": "application/fhir+json", "Cache-Control": "no-cache"})
        if answer.status_code != 200:
            return answer.status_code, []
        bundle = answer.json()
        versions += [(e.get("resource"), (e.get("request") or {}).get("method")) for e in bundle.get("entry") or []]
        url = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), "")
    return 200, versions


def present(base: str, keys: list[Key]) -> list[Key]:
    """Which of ``keys`` can still be read."""
    with httpx.Client(timeout=60) as http:
        return [k for k in keys if http.get(f"{base}/{k[0]}/{k[1]}", headers=FHIR).status_code == 200]
