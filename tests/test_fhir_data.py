"""Invariants of the generated FHIR definition data (purgeproxy/fhir/data/*.json).

The files are produced by tools/gen_fhir_data.py from the official FHIR
definitions; these tests pin what the purge engine relies on.
"""

import json
import re
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "purgeproxy" / "fhir" / "data"
VERSIONS = {"r4": "4.0.1", "r4b": "4.3.0", "r5": "5.0.0"}
PATH_RE = re.compile(r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$")

# (compartment resource types, compartment (type, param) pairs) per version
COMPARTMENT_COUNTS = {"r4": (67, 102), "r4b": (66, 100), "r5": (73, 105)}


def load(version):
    with open(DATA_DIR / f"{version}.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def data(request):
    return request.param, load(request.param)


def paths(d, rtype, param):
    return d["referenceParams"][rtype][param]["paths"]


def test_header_and_size(data):
    version, d = data
    assert d["fhirVersion"] == VERSIONS[version]
    assert d["source"]
    assert (DATA_DIR / f"{version}.json").stat().st_size < 1_000_000


def test_file_is_compact_and_sorted(data):
    version, d = data
    text = (DATA_DIR / f"{version}.json").read_text(encoding="utf-8")
    expected = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    assert text == expected


def test_resource_types(data):
    _, d = data
    types = d["resourceTypes"]
    assert types == sorted(set(types))
    assert "Patient" in types and "Observation" in types
    for abstract in ("Resource", "DomainResource", "MetadataResource", "CanonicalResource"):
        assert abstract not in types
    assert set(d["referenceParams"]) <= set(types)
    assert set(d["patientCompartment"]) <= set(types)


def test_compartment_counts(data):
    version, d = data
    comp = d["patientCompartment"]
    n_types, n_pairs = COMPARTMENT_COUNTS[version]
    assert len(comp) == n_types
    assert sum(len(v) for v in comp.values()) == n_pairs
    assert all(comp.values()), "only resources with params are listed"


def test_every_compartment_pair_has_paths(data):
    _, d = data
    for rtype, params in d["patientCompartment"].items():
        assert len(set(params)) == len(params)
        for p in params:
            entry = d["referenceParams"].get(rtype, {}).get(p)
            assert entry is not None, f"{rtype}.{p}"
            assert entry["paths"], f"{rtype}.{p}"


def test_path_objects_well_formed(data):
    _, d = data
    for rtype, params in d["referenceParams"].items():
        for code, entry in params.items():
            assert set(entry) == {"paths", "targets"}
            assert entry["targets"] == sorted(set(entry["targets"]))
            assert entry["paths"], f"{rtype}.{code}"
            for obj in entry["paths"]:
                assert PATH_RE.match(obj["path"]), (rtype, code, obj)
                assert "type" in obj
                assert obj["type"] is None or obj["type"] in d["resourceTypes"]
                assert set(obj) <= {"path", "type", "where", "datatype",
                                    "extensionUrl", "valueKey"}
                if "extensionUrl" in obj:
                    assert obj["path"].split(".")[-1] == "extension"
                    assert obj["valueKey"] == "valueReference"
                if "datatype" in obj:
                    assert obj["datatype"] in ("canonical", "uri")


def test_unsupported_expressions_are_listed(data):
    _, d = data
    unsupported = d["unsupportedExpressions"]
    for u in unsupported:
        assert set(u) == {"resourceType", "code", "expression", "reason"}
    # The only reference parameters that cannot be expressed as element paths:
    # Bundle's entry[0] parameters (+ R4B Ingredient.manufacturer, R5 _in).
    assert {(u["resourceType"], u["code"]) for u in unsupported} >= {
        ("Bundle", "composition"), ("Bundle", "message")}
    assert len(unsupported) <= 3
    compartment_types = set(d["patientCompartment"])
    assert not any(u["resourceType"] in compartment_types for u in unsupported)


def test_common_paths(data):
    _, d = data
    assert paths(d, "Observation", "subject") == [{"path": "subject", "type": None}]
    assert [p["path"] for p in paths(d, "Group", "member")] == ["member.entity"]
    assert [p["path"] for p in paths(d, "Patient", "link")] == ["link.other"]
    assert d["patientCompartment"]["Patient"] == ["link"]
    assert d["patientCompartment"]["Group"] == ["member"]
    assert paths(d, "Person", "patient") == [{"path": "link.target", "type": "Patient"}]
    assert [p["path"] for p in paths(d, "Appointment", "actor")] == ["participant.actor"]
    assert paths(d, "Task", "patient") == [{"path": "for", "type": "Patient"}]


def test_r4_specifics():
    d = load("r4")
    comp = d["patientCompartment"]
    assert comp["AllergyIntolerance"] == ["patient", "recorder", "asserter"]
    assert comp["Observation"] == ["subject", "performer"]
    assert set(comp["Coverage"]) == {"beneficiary", "policy-holder", "subscriber", "payor"}
    assert paths(d, "Coverage", "policy-holder") == [{"path": "policyHolder", "type": None}]
    assert paths(d, "Condition", "patient") == [{"path": "subject", "type": "Patient"}]
    assert [p["path"] for p in paths(d, "AuditEvent", "patient")] == ["agent.who", "entity.what"]
    assert [p["path"] for p in paths(d, "MedicationAdministration", "performer")] == [
        "performer.actor"]
    # bare choice element (Consent.source[x]) -> its Reference variant
    assert paths(d, "Consent", "source-reference") == [{"path": "sourceReference", "type": None}]
    # "(X as Reference)" casts -> concrete choice element name
    assert paths(d, "MedicationRequest", "medication") == [
        {"path": "medicationReference", "type": None}]
    assert "Media" in comp and "DocumentManifest" in comp and "RequestGroup" in comp
    assert "Parameters" in d["resourceTypes"] and len(d["resourceTypes"]) == 146
    assert d["patientCompartmentByDefinition"] == []


def test_r4b_specifics():
    d = load("r4b")
    assert len(d["resourceTypes"]) == 141
    # The R4B Patient CompartmentDefinition does not list Task
    assert "Task" not in d["patientCompartment"]
    assert "Task" in load("r4")["patientCompartment"]


def test_r5_differs_from_r4():
    r4, r5 = load("r4"), load("r5")
    c4, c5 = r4["patientCompartment"], r5["patientCompartment"]
    assert len(r5["resourceTypes"]) == 158
    # removed in R5
    for t in ("Media", "DocumentManifest", "RequestGroup", "DeviceUseStatement"):
        assert t in c4 and t not in c5 and t not in r5["resourceTypes"]
    # added in R5
    for t in ("RequestOrchestration", "NutritionIntake", "DeviceUsage",
              "EncounterHistory", "GenomicStudy", "ImagingSelection"):
        assert t in c5 and t not in c4
    # Coverage.payor became paymentby-party
    assert c5["Coverage"] == ["policy-holder", "subscriber", "beneficiary", "paymentby-party"]
    assert paths(r5, "Coverage", "paymentby-party") == [{"path": "paymentBy.party", "type": None}]
    # Patient is in its own compartment "{def}" (kept out of the param list)
    assert r5["patientCompartmentByDefinition"] == ["Patient"]
    # CodeableReference elements resolve to their .reference
    assert paths(r5, "DeviceRequest", "performer") == [{"path": "performer.reference", "type": None}]
    # (X as Reference) on a choice element
    assert paths(r5, "NutritionIntake", "source") == [{"path": "reportedReference", "type": None}]
    assert paths(r5, "Observation", "value-reference") == [{"path": "valueReference", "type": None}]
    # inherited Resource-level reference parameter (R5 _profile is type reference)
    assert paths(r5, "Observation", "_profile") == [
        {"datatype": "canonical", "path": "meta.profile", "type": None}]


def test_where_filters_are_kept():
    r5 = load("r5")
    (obj,) = paths(r5, "QuestionnaireResponse", "item-subject")
    assert obj["path"] == "item.answer.valueReference"
    assert "questionnaireresponse-isSubject" in obj["where"]["item"]
    (obj,) = paths(load("r4"), "PlanDefinition", "composed-of")
    assert obj == {"datatype": "canonical", "path": "relatedArtifact.resource", "type": None,
                   "where": {"relatedArtifact": "type='composed-of'"}}
