"""FHIR formats of the proxy's own answers: negotiation, and every answer shape written as FHIR XML
that the official schemas accept and that reads back to the same JSON, in R4, R4B and R5."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from lxml import etree

from purgeproxy.capabilities import AdvertisedOperation, advertise
from purgeproxy.fhir.formats import JSON, XML, FormatRefused, Requested, requested, serialize, summarize
from purgeproxy.fhir.outcome import OutcomeError, issue, outcome
from purgeproxy.fhir.xml import FHIR_NS, XHTML_NS, XmlError, from_xml, tables_for, to_xml
from purgeproxy.jobs.store import Job
from purgeproxy.operations.async_status import kodjin_parameters, result_bundle
from tests import fhir_schemas

VERSIONS = ["4.0.1", "4.3.0", "5.0.0"]
SCHEMAS = ["4.0.1", "5.0.0"]  # R4B ships no XSD

# ---- negotiation --------------------------------------------------------------------------------

NEGOTIATION = [
    # (query, Accept, expected format or HTTP status)
    ({}, None, JSON),
    ({}, "*/*", JSON),
    ({}, "application/fhir+xml", XML),
    ({}, "application/xml", XML),
    ({}, "text/xml", XML),
    ({}, "application/fhir+json", JSON),
    ({}, "application/json", JSON),
    ({}, "application/fhir+xml;q=0.5, application/fhir+json", JSON),
    ({}, "application/fhir+json;q=0.1, application/fhir+xml;q=0.9", XML),
    ({}, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", XML),  # a browser
    ({}, "application/fhir+xml; fhirVersion=4.0", XML),
    ({}, "text/html", 406),
    ({}, "application/fhir+xml;q=0", 406),
    ({"_format": "xml"}, None, XML),
    ({"_format": "json"}, "application/fhir+xml", JSON),  # _format wins over Accept
    ({"_format": "xml"}, "application/fhir+json", XML),
    ({"_format": "application/fhir+xml"}, None, XML),
    ({"_format": "application/xml"}, None, XML),
    ({"_format": "text/xml"}, None, XML),
    ({"_format": "application/json"}, None, JSON),
    ({"_format": "html"}, None, 406),
    ({"_format": "ttl"}, "application/fhir+json", 406),
    ({"_pretty": "yes"}, None, 400),
    ({"_summary": "count"}, None, 400),
    ({"_summary": "bogus"}, None, 400),
]


@pytest.mark.parametrize(("query", "accept", "expected"), NEGOTIATION)
def test_negotiation(query: dict[str, str], accept: str | None, expected: str | int) -> None:
    if isinstance(expected, int):
        with pytest.raises(FormatRefused) as refused:
            requested(query, accept)
        assert refused.value.status == expected
    else:
        assert requested(query, accept).format == expected


# ---- every answer shape -------------------------------------------------------------------------

def _job(result: dict[str, Any] | None = None, status: str = "done") -> Job:
    return Job("j1", "$purge", "$purge Patient/p1", {"request": {"patient_id": "p1"}, "caller": "c"}, status,  # type: ignore[arg-type]
               12, 12, result, None, 1, datetime(2026, 11, 22, 10, 0, tzinfo=UTC))


NARRATIVE = {"status": "generated", "div": f'<div xmlns="{XHTML_NS}"><p>Purged <b>12</b> &amp; verified</p></div>'}
OUTCOME = {
    "resourceType": "OperationOutcome", "id": "o1", "meta": {"lastUpdated": "2026-11-22T10:00:00Z"},
    "text": NARRATIVE,
    "extension": [{"url": "http://example.org/purge-count", "valueInteger": 12}],
    "issue": [
        {"extension": [{"url": "http://example.org/where", "valueString": "upstream"}],
         "severity": "error", "code": "processing", "details": {"coding": [{"system": "http://example.org/cs", "code": "x"}],
                                                               "text": "a <detail> & \"quotes\"\nsecond line"},
         "diagnostics": "Observation/o1 was not deleted", "location": ["Observation/o1"],
         "expression": ["Observation", "Patient"],
         "_expression": [None, {"extension": [{"url": "http://example.org/note", "valueBoolean": True}]}]},
        issue("information", "informational", "Observation: 12 deleted", expression=["Observation"]),
    ],
}
PARAMETERS = {"resourceType": "Parameters", "parameter": [
    {"name": "count", "valueInteger": 3},
    {"name": "outcome", "resource": OUTCOME},
    {"name": "job", "part": [
        {"name": "id", "valueString": "j1"},
        {"name": "progress", "part": [{"name": "ratio", "valueDecimal": 0.25}, {"name": "ok", "valueBoolean": False},
                                      {"name": "at", "valueInstant": "2026-11-22T10:00:00Z"}]},
    ]},
]}
STATEMENT = {
    "resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-22", "kind": "instance",
    "software": {"name": "Some FHIR server", "version": "8.4.0"},
    "implementation": {"description": "behind purgeproxy", "url": "http://fhir.example/fhir"},
    "fhirVersion": "4.0.1", "format": ["application/fhir+xml", "application/fhir+json"],
    "rest": [{"extension": [{"url": "http://example.org/rest-ext", "valueCode": "x"}], "mode": "server",
              "resource": [{"type": "Patient", "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                            "interaction": [{"code": "read"}, {"code": "delete"}],
                            "searchParam": [{"name": "name", "type": "string"}]}],
              "interaction": [{"code": "transaction"}]}],
}
OPERATIONS = [AdvertisedOperation("purge", "http://hl7.org/fhir/build/OperationDefinition/Patient-purge", "Patient"),
              AdvertisedOperation("expunge", "http://hapifhir.io/fhir/OperationDefinition/expunge")]


def _shapes(version: str) -> dict[str, dict[str, Any]]:
    failed = {"status": 422, "outcome": OutcomeError(422, "business-rule", "repeat with confirm=true", "confirm").document()}
    return {
        "outcome": OUTCOME,
        "outcome-builder": outcome(issue("information", "informational", "done")),
        "parameters": PARAMETERS,
        "kodjin-status": kodjin_parameters(_job({"status": 200, "outcome": OUTCOME})),
        "kodjin-running": kodjin_parameters(_job(status="running")),
        "async-bundle": result_bundle(_job({"status": 200, "outcome": OUTCOME})),
        "async-bundle-failed": result_bundle(_job(failed)),
        "capability-statement": advertise({**STATEMENT, "fhirVersion": version}, OPERATIONS),
    }


SHAPES = list(_shapes("4.0.1"))


def _children_in_table_order(node: etree._Element, type_name: str, version: str) -> None:
    """Every element's children follow the StructureDefinition's order (what the XSD's sequence
    checks too), primitives carry ``value`` attributes, all in the FHIR namespace."""
    tables = tables_for(version)
    order = {slot: i for i, (name, types, flags) in enumerate(tables.entries(type_name))
             for slot in tables.slots(type_name) if slot == name or ("x" in flags and slot.startswith(name))}
    last = -1
    for child in node:
        local = etree.QName(child).localname
        if local == "div":
            assert etree.QName(child).namespace == XHTML_NS
            continue
        assert etree.QName(child).namespace == FHIR_NS
        position = order[local]
        assert position >= last, f"{type_name}.{local} out of order"
        last = position
        slot = tables.slots(type_name)[local]
        if slot.type in tables.primitives:
            assert child.get("value") is not None or len(child), f"{type_name}.{local} has no value attribute"
        elif slot.type == "Resource":
            _children_in_table_order(child[0], etree.QName(child[0]).localname, version)
        else:
            _children_in_table_order(child, slot.type, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_answer_shape_round_trips_through_fhir_xml(shape: str, version: str) -> None:
    resource = _shapes(version)[shape]
    tables = tables_for(version)
    for pretty in (False, True):
        document = serialize(resource, Requested(XML, pretty), tables)
        root = etree.fromstring(document)
        assert etree.QName(root).namespace == FHIR_NS and etree.QName(root).localname == resource["resourceType"]
        _children_in_table_order(root, resource["resourceType"], version)
        assert from_xml(document, tables) == resource
        assert json.loads(serialize(resource, Requested(JSON, pretty), tables)) == resource


@pytest.mark.parametrize("version", SCHEMAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_answer_shape_is_valid_against_the_official_schema(shape: str, version: str) -> None:
    document = to_xml(_shapes(version)[shape], tables_for(version), pretty=True).encode()
    assert fhir_schemas.problems(document, version) == []


def test_the_schema_check_is_not_blind() -> None:
    """An element out of order and a primitive without ``value`` are both caught."""
    good = to_xml(OUTCOME, tables_for("4.0.1")).encode()
    swapped = good.replace(b'<severity value="error"/><code value="processing"/>',
                           b'<code value="processing"/><severity value="error"/>')
    assert swapped != good and fhir_schemas.problems(swapped, "4.0.1")
    text_value = good.replace(b'<severity value="error"/>', b"<severity>error</severity>")
    assert text_value != good and fhir_schemas.problems(text_value, "4.0.1")


def test_elements_a_version_does_not_define_are_refused_not_dropped() -> None:
    with pytest.raises(XmlError, match="no element 'bogus'"):
        to_xml({"resourceType": "OperationOutcome", "issue": [], "bogus": 1}, tables_for("4.0.1"))
    with pytest.raises(XmlError, match="not a FHIR 4.0.1 resource type"):
        to_xml({"resourceType": "ActorDefinition"}, tables_for("4.0.1"))  # R5 only
    assert "<ActorDefinition" in to_xml({"resourceType": "ActorDefinition", "status": "active"}, tables_for("5.0.0"))


def test_a_narrative_that_is_not_an_xhtml_div_is_refused() -> None:
    for div in ("<div>no namespace</div>", "<p xmlns='http://www.w3.org/1999/xhtml'>p</p>", "<div",
                f'<?xml version="1.0"?><div xmlns="{XHTML_NS}">declared</div>',
                f'<div xmlns="{XHTML_NS}"><!DOCTYPE x></div>'):
        with pytest.raises(XmlError):
            to_xml({"resourceType": "OperationOutcome", "text": {"status": "generated", "div": div}, "issue": []},
                   tables_for("4.0.1"))


# ---- _summary and _pretty -----------------------------------------------------------------------

def test_summary_subsets_and_tags_the_resource() -> None:
    tables = tables_for("4.0.1")
    data = summarize(OUTCOME, "data", tables)
    assert "text" not in data and data["issue"] == OUTCOME["issue"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in data["meta"]["tag"]
    text = summarize(OUTCOME, "text", tables)
    assert text["text"] == NARRATIVE and text["issue"] == OUTCOME["issue"] and "extension" not in text  # issue is mandatory
    summary = summarize(advertise(STATEMENT, OPERATIONS), "true", tables)
    rest = summary["rest"][0]  # rest and its operations are summary elements; interactions are not
    assert "interaction" not in rest and "extension" not in rest and rest["operation"] == [OPERATIONS[1].entry()]
    assert "interaction" not in rest["resource"][0] and rest["resource"][0]["operation"] == [OPERATIONS[0].entry()]
    assert summary["software"] == STATEMENT["software"]
    assert summary["fhirVersion"] == "4.0.1" and summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert summarize(OUTCOME, "false", tables) is OUTCOME
    assert "SUBSETTED" not in to_xml(summarize(outcome(issue("error", "x", "y")), "true", tables), tables)


def test_pretty_only_changes_whitespace() -> None:
    tables = tables_for("4.0.1")
    pretty = serialize(OUTCOME, Requested(XML, True), tables)
    assert pretty.count(b"\n") > 10 and serialize(OUTCOME, Requested(XML, False), tables).count(b"\n") == 0
    assert from_xml(pretty, tables) == OUTCOME
