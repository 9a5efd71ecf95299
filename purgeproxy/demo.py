"""Demo data: a few synthetic patients with realistic records, written to any FHIR R4 server.

Each patient gets a few hundred resources (encounters with vital signs and lab panels, diagnostic
reports, conditions, medications, immunizations, procedures, allergies, care plans, and
documents whose bytes live in a Binary). Around them, what a purge must leave alone: a Group and
a Coverage shared by two patients, and an AuditEvent about the first patient (AuditEvents are
never deleted). Everything is synthetic and deterministic for a given tag, and written with ids
chosen here (PUT in transaction Bundles), so that re-seeding updates rather than duplicates.

``python -m purgeproxy.demo URL`` seeds the server at URL and prints the patient ids, one per
line (what ``purgeproxy purge --from-file`` reads); ``make run`` uses it.
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
LOINC, SNOMED, CVX = "http://loinc.org", "http://snomed.info/sct", "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CHUNK = 50  # resources per transaction: Medplum's limit for updates in one Bundle

NAMES = [("Okafor", "Amara"), ("Lindqvist", "Erik"), ("Tanaka", "Yui"), ("Moreau", "Camille"),
         ("Haddad", "Karim"), ("Novak", "Petra"), ("Silva", "Joao"), ("Brennan", "Siobhan")]
# (LOINC code, display, unit, low, high) of the vital signs taken at every encounter
VITALS = [("8867-4", "Heart rate", "/min", 55, 100), ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 150),
          ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 95), ("29463-7", "Body weight", "kg", 50, 110),
          ("8310-5", "Body temperature", "Cel", 36, 38), ("9279-1", "Respiratory rate", "/min", 12, 20)]
LABS = [("2345-7", "Glucose", "mg/dL", 70, 140), ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3),
        ("718-7", "Hemoglobin", "g/dL", 11, 17), ("6690-2", "Leukocytes", "10*3/uL", 4, 11),
        ("777-3", "Platelets", "10*3/uL", 150, 400), ("2951-2", "Sodium", "mmol/L", 135, 145),
        ("2823-3", "Potassium", "mmol/L", 3.5, 5.1), ("2093-3", "Cholesterol", "mg/dL", 140, 260),
        ("4548-4", "Hemoglobin A1c", "%", 4.8, 8.5), ("1742-6", "ALT", "U/L", 7, 56)]
CONDITIONS = [("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertension"),
              ("195967001", "Asthma"), ("55822004", "Hyperlipidemia"), ("35489007", "Depressive disorder"),
              ("40055000", "Chronic sinusitis"), ("271737000", "Anemia"), ("239873007", "Osteoarthritis of knee"),
              ("68566005", "Urinary tract infection"), ("36971009", "Sinusitis")]
MEDICATIONS = [("860975", "Metformin 500 MG Oral Tablet"), ("314076", "Lisinopril 10 MG Oral Tablet"),
               ("617312", "Atorvastatin 40 MG Oral Tablet"), ("745679", "Albuterol 0.09 MG/ACTUAT Inhaler"),
               ("312938", "Sertraline 50 MG Oral Tablet"), ("308182", "Amoxicillin 250 MG Oral Capsule")]
VACCINES = [("140", "Influenza, seasonal"), ("115", "Tdap"), ("208", "COVID-19, mRNA"), ("33", "Pneumococcal")]
PROCEDURES = [("73761001", "Colonoscopy"), ("80146002", "Appendectomy"), ("399208008", "Chest X-ray"),
              ("29303009", "Electrocardiogram")]
ALLERGIES = [("91936005", "Penicillin allergy"), ("300913006", "Shellfish allergy"), ("91935009", "Peanut allergy")]

Key = tuple[str, str]


@dataclass
class DemoData:
    """What the demo writes: the patients to purge, and what a purge must keep."""

    patients: list[str] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    shared: list[Key] = field(default_factory=list)  # in several patients' compartments: kept
    protected: list[Key] = field(default_factory=list)  # AuditEvents: never deleted

    def counts(self) -> Counter[str]:
        return Counter(resource["resourceType"] for resource in self.resources)


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


class _Record:
    """One patient's synthetic record; ``add`` collects the resources in writing order."""

    def __init__(self, data: DemoData, pid: str, rng: random.Random, encounters: int) -> None:
        self.data, self.pid, self.rng, self.encounters = data, pid, rng, encounters
        self.subject = _ref("Patient", pid)

    def add(self, rtype: str, suffix: str, body: dict[str, Any]) -> str:
        rid = f"{self.pid}-{suffix}"
        self.data.resources.append({"resourceType": rtype, "id": rid, **body})
        return rid

    def build(self, family: str, given: str) -> None:
        birth = date(1940, 1, 1) + timedelta(days=self.rng.randrange(365 * 60))
        self.data.resources.append({
            "resourceType": "Patient", "id": self.pid, "active": True,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{self.rng.randrange(10**7):07d}"}],
            "name": [{"family": family, "given": [given]}], "gender": self.rng.choice(["female", "male"]),
            "birthDate": birth.isoformat(),
            "address": [{"city": self.rng.choice(["Springfield", "Riverton", "Lakeside"]), "country": "US"}]})
        start = date(2019, 1, 1)
        for n in range(self.encounters):
            self.encounter(n, start + timedelta(days=n * 73 + self.rng.randrange(30)))
        for n, (code, text) in enumerate(self.rng.sample(CONDITIONS, 8)):
            self.add("Condition", f"cond{n}", {"subject": self.subject, "code": _concept(SNOMED, code, text),
                                               "clinicalStatus": _concept("http://terminology.hl7.org/CodeSystem/"
                                                                          "condition-clinical", "active", "Active")})
        for n in range(24):
            code, text = MEDICATIONS[n % len(MEDICATIONS)]
            self.add("MedicationRequest", f"med{n}", {"status": "active" if n < 6 else "completed", "intent": "order",
                                                      "subject": self.subject,
                                                      "medicationCodeableConcept": _concept(RXNORM, code, text),
                                                      "authoredOn": (start + timedelta(days=n * 60)).isoformat()})
        for n in range(12):
            code, text = VACCINES[n % len(VACCINES)]
            self.add("Immunization", f"imm{n}", {"status": "completed", "patient": self.subject,
                                                 "vaccineCode": _concept(CVX, code, text),
                                                 "occurrenceDateTime": (start + timedelta(days=n * 120)).isoformat()})
        for n, (code, text) in enumerate(PROCEDURES * 2):
            self.add("Procedure", f"proc{n}", {"status": "completed", "subject": self.subject,
                                               "code": _concept(SNOMED, code, text),
                                               "performedDateTime": (start + timedelta(days=n * 150)).isoformat()})
        for n, (code, text) in enumerate(self.rng.sample(ALLERGIES, 2)):
            self.add("AllergyIntolerance", f"allergy{n}", {"patient": self.subject, "code": _concept(SNOMED, code, text)})
        self.add("CarePlan", "careplan", {"status": "active", "intent": "plan", "subject": self.subject,
                                          "title": "Chronic disease management"})
        for n, title in enumerate(["Discharge summary", "Referral letter"]):
            self.document(n, title)

    def encounter(self, n: int, when: date) -> None:
        encounter = self.add("Encounter", f"enc{n}", {
            "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                            "code": "AMB", "display": "ambulatory"},
            "subject": self.subject, "period": {"start": f"{when.isoformat()}T09:00:00Z",
                                                "end": f"{when.isoformat()}T09:40:00Z"}})
        for code, text, unit, low, high in VITALS:
            self.observation(f"enc{n}-{code}", encounter, when, "vital-signs", code, text, unit, low, high)
        if n % 3:
            return
        results = [self.observation(f"enc{n}-lab-{code}", encounter, when, "laboratory", code, text, unit, low, high)
                   for code, text, unit, low, high in LABS]
        self.add("DiagnosticReport", f"enc{n}-panel", {
            "status": "final", "code": _concept(LOINC, "24323-8", "Comprehensive metabolic panel"),
            "subject": self.subject, "encounter": _ref("Encounter", encounter),
            "effectiveDateTime": when.isoformat(), "result": [_ref("Observation", oid) for oid in results]})

    def observation(self, suffix: str, encounter: str, when: date, category: str, code: str, text: str,
                    unit: str, low: float, high: float) -> str:
        value = round(self.rng.uniform(low, high), 1)
        return self.add("Observation", suffix, {
            "status": "final", "category": [_concept("http://terminology.hl7.org/CodeSystem/observation-category",
                                                     category, category)],
            "code": _concept(LOINC, code, text), "subject": self.subject, "encounter": _ref("Encounter", encounter),
            "effectiveDateTime": when.isoformat(), "valueQuantity": {"value": value, "unit": unit,
                                                                      "system": "http://unitsofmeasure.org", "code": unit}})

    def document(self, n: int, title: str) -> None:
        text = f"{title} for {self.pid}: synthetic demo text, no real person.".encode()
        binary = self.add("Binary", f"doc{n}-bytes", {"contentType": "text/plain",
                                                      "data": base64.b64encode(text).decode()})
        self.add("DocumentReference", f"doc{n}", {
            "status": "current", "subject": self.subject, "description": title,
            "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{binary}", "title": title}}]})


def build(patients: int = 3, encounters: int = 20, tag: str | None = None) -> DemoData:
    """``patients`` records of about 14 resources per encounter (~280 at the default 20), a Group
    and a Coverage shared by the first two, and an AuditEvent about the first."""
    tag = tag or "demo-" + uuid.uuid4().hex[:6]
    rng = random.Random(tag)
    data = DemoData()
    for n in range(patients):
        pid = f"{tag}-p{n + 1}"
        family, given = NAMES[n % len(NAMES)]
        _Record(data, pid, rng, encounters).build(family, given)
        data.patients.append(pid)
    if len(data.patients) >= 2:
        first, second = data.patients[:2]
        data.resources.append({"resourceType": "Group", "id": f"{tag}-household", "type": "person", "actual": True,
                               "name": "Household", "member": [{"entity": _ref("Patient", p)} for p in (first, second)]})
        data.resources.append({"resourceType": "Coverage", "id": f"{tag}-family-plan", "status": "active",
                               "subscriber": _ref("Patient", first), "beneficiary": _ref("Patient", second),
                               "payor": [{"display": "Demo Health Insurance"}]})
        data.shared += [("Group", f"{tag}-household"), ("Coverage", f"{tag}-family-plan")]
    if data.patients:
        data.resources.append({
            "resourceType": "AuditEvent", "id": f"{tag}-audit",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "action": "R", "recorded": "2024-05-01T10:00:00Z", "outcome": "0",
            "agent": [{"who": {"display": "Dr. Demo"}, "requestor": True}],
            "source": {"observer": {"display": "Demo EHR"}},
            "entity": [{"what": _ref("Patient", data.patients[0])}]})
        data.protected.append(("AuditEvent", f"{tag}-audit"))
    return data


def write(base: str, resources: list[dict[str, Any]], headers: dict[str, str] | None = None,
          chunk: int = CHUNK) -> None:
    """PUT every resource, ``chunk`` per transaction Bundle, straight to the FHIR server at ``base``."""
    with httpx.Client(timeout=600, headers={**FHIR, **(headers or {})}) as http:
        for start in range(0, len(resources), chunk):
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in resources[start:start + chunk]]}
            answer = http.post(base.rstrip("/"), json=bundle)
            if answer.status_code != 200:
                raise RuntimeError(f"the server refused the demo data ({answer.status_code}): {answer.text[:500]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m purgeproxy.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the FHIR server's base URL (the upstream, not the proxy)")
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--encounters", type=int, default=20, help="per patient; ~14 resources each")
    parser.add_argument("--tag", help="id prefix (default: demo-<random>)")
    options = parser.parse_args(argv)
    data = build(options.patients, options.encounters, options.tag)
    try:
        write(options.base, data.resources)
    except (httpx.HTTPError, RuntimeError) as failure:
        print(f"demo: cannot seed {options.base}: {failure}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{count} {rtype}" for rtype, count in sorted(data.counts().items()))
    print(f"seeded {len(data.resources)} resources: {counts}", file=sys.stderr)
    print("\n".join(data.patients))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
