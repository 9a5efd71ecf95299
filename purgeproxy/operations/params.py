"""Parsing and validating operation input: ``Parameters`` bodies and query parameters.

Pure functions raising ``BadRequest``: a request is either fully understood or refused with a
precise OperationOutcome before anything reaches the upstream. A ``Parameters`` body may be FHIR
JSON or FHIR XML; XML is parsed hardened and converted to the JSON structure
(``purgeproxy.fhir.xml``), so both meet the same checks. ``_format``, ``_pretty`` and ``_summary``
shape the answer (``purgeproxy.render``), so every operation accepts them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from purgeproxy.engine.compartment import Compartment
from purgeproxy.fhir.definitions import FhirDefinitions
from purgeproxy.fhir.formats import FORMAT_PARAMETERS, XML_TYPES
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.fhir.xml import XmlError, from_xml, parse, tables_for

JSON_TYPES = ("application/fhir+json", "application/json")
DEFAULT_BODY_VERSION = "4.0.1"  # an XML body read before the upstream's version is known


class BadRequest(OutcomeError):
    """The request is not understood as sent (400, 413, 415, 422); nothing reached the upstream."""


@dataclass(frozen=True)
class PurgeInput:
    dry_run: bool
    compartment_definition: dict[str, Any] | None  # validated later, against the FHIR version
    confirm: bool = False  # allows deleting more than purge.max_without_confirm
    reason: str | None = None  # why, for the erasure receipt (LinuxForHealth's $erase requires one)
    remove_references: bool = False  # _remove-references: kept referrers lose their references


def _boolean(value: str, where: str) -> bool:
    if value not in ("true", "false"):
        raise BadRequest(400, "invalid", f"{where} must be 'true' or 'false'", where)
    return value == "true"


def parse_query(query: Mapping[str, str], allowed: frozenset[str]) -> dict[str, str]:
    """The operation's query parameters; unknown or repeated ones are refused. The format
    parameters are left to the answer's rendering."""
    unknown = sorted(set(query) - allowed - FORMAT_PARAMETERS)
    if unknown:
        name = unknown[0][:64]
        raise BadRequest(400, "not-supported", f"unknown parameter '{name}'", name)
    for name in query:
        if len(query.getall(name)) > 1:  # type: ignore[attr-defined]
            raise BadRequest(400, "invalid", f"parameter '{name}' is repeated", name)
    return {name: value for name, value in query.items() if name not in FORMAT_PARAMETERS}


def is_xml(content_type: str) -> bool:
    return content_type in XML_TYPES


def _refused(refused: XmlError) -> BadRequest:
    return BadRequest(400, "security" if refused.unsafe else "structure", str(refused))


def check_xml(body: bytes) -> None:
    """Refuse a body that is not well-formed XML or declares a DTD or entities: done before the
    upstream is asked its FHIR version, so such a body costs the upstream nothing."""
    try:
        parse(body)
    except XmlError as refused:
        raise _refused(refused) from None


def _from_xml(body: bytes, fhir_version: str | None) -> dict[str, Any]:
    try:
        return from_xml(body, tables_for(fhir_version or DEFAULT_BODY_VERSION))
    except XmlError as refused:
        raise _refused(refused) from None


def parse_parameters(body: bytes, content_type: str, fhir_version: str | None = None) -> dict[str, Any] | None:
    """The request's ``Parameters`` resource (FHIR JSON or FHIR XML of ``fhir_version``, the
    upstream's), or None for an empty body."""
    if not body.strip():
        return None
    if is_xml(content_type):
        document: Any = _from_xml(body, fhir_version)
    elif content_type not in JSON_TYPES:
        raise BadRequest(415, "not-supported", "the body must be application/fhir+json or application/fhir+xml")
    else:
        document = _from_json(body)
    if not isinstance(document, dict) or document.get("resourceType") != "Parameters":
        raise BadRequest(422, "invalid", "the body must be a Parameters resource", "Parameters")
    parameters = document.get("parameter", [])
    if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
        raise BadRequest(400, "structure", "Parameters.parameter must be a list of objects",
                         "Parameters.parameter")
    return document


def _from_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "structure", "the body is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested arrays: small enough to pass the size limit
        raise BadRequest(400, "structure", "the body nests JSON too deeply") from None


BOOLEAN_PARAMETERS = ("dryRun", "confirm", "_remove-references")


def _query_booleans(query: Mapping[str, str]) -> dict[str, bool]:
    params = parse_query(query, frozenset(BOOLEAN_PARAMETERS))
    return {name: _boolean(value, name) for name, value in params.items()}


def _body_boolean(flags: dict[str, bool], parameter: dict[str, Any], where: str) -> None:
    """A ``valueBoolean`` parameter; given in the query too, both must agree."""
    name, value = parameter["name"], parameter["valueBoolean"]
    if name in flags and flags[name] != value:
        raise BadRequest(400, "invalid", f"{name} is given twice with different values", where)
    flags[name] = value


REASON_MAX = 1000  # characters of the free-text reason a receipt carries


def checked_reason(value: Any, where: str = "reason") -> str:
    """The caller's ``reason``: non-empty text of at most ``REASON_MAX`` characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > REASON_MAX:
        raise BadRequest(400, "invalid", f"reason must be non-empty text of at most {REASON_MAX} characters", where)
    return value


def parse_purge(query: Mapping[str, str], body: bytes, content_type: str,
                fhir_version: str | None = None) -> PurgeInput:
    reason = query.get("reason")
    flags = _query_booleans(_without(query, "reason") if "reason" in query else query)
    reason = None if reason is None else checked_reason(reason)
    definition = None
    document = parse_parameters(body, content_type, fhir_version)
    for index, parameter in enumerate((document or {}).get("parameter", [])):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name")
        if name in BOOLEAN_PARAMETERS and isinstance(parameter.get("valueBoolean"), bool):
            _body_boolean(flags, parameter, where)
        elif name == "compartmentDefinition" and isinstance(parameter.get("resource"), dict):
            if definition is not None:
                raise BadRequest(400, "invalid", "compartmentDefinition is given twice", where)
            definition = parameter["resource"]
        elif name == "reason" and "valueString" in parameter:
            if reason is not None and reason != parameter["valueString"]:
                raise BadRequest(400, "invalid", "reason is given twice with different values", where)
            reason = checked_reason(parameter["valueString"], where)
        elif name in (*BOOLEAN_PARAMETERS, "compartmentDefinition", "reason"):
            raise BadRequest(400, "invalid", f"parameter '{name}' has the wrong type", where)
        else:
            raise BadRequest(400, "not-supported", f"unknown parameter '{_printable(name)}'", where)
    return PurgeInput(flags.get("dryRun", False), definition, flags.get("confirm", False), reason,
                      flags.get("_remove-references", False))


def _without(query: Mapping[str, str], name: str) -> Mapping[str, str]:
    """The query less one parameter (after its own checks), for the checks of the others."""
    if len(query.getall(name)) > 1:  # type: ignore[attr-defined]
        raise BadRequest(400, "invalid", f"parameter '{name}' is repeated", name)
    rest = query.copy()  # type: ignore[attr-defined]
    rest.popall(name)
    return rest  # type: ignore[no-any-return]


def _printable(name: Any) -> str:
    """A parameter name fit to quote back: a string, at most 64 characters."""
    return name[:64] if isinstance(name, str) else type(name).__name__


def compartment_from(definition: dict[str, Any], fhir: FhirDefinitions) -> Compartment:
    """Validate a contained CompartmentDefinition against the FHIR version and return it."""
    root = "Parameters.parameter.resource"
    if definition.get("resourceType") != "CompartmentDefinition":
        raise BadRequest(422, "invalid", "compartmentDefinition must be a CompartmentDefinition", root)
    if definition.get("code") != "Patient":
        raise BadRequest(422, "invalid", "CompartmentDefinition.code must be 'Patient'", f"{root}.code")
    entries = definition.get("resource")
    if not isinstance(entries, list):
        raise BadRequest(422, "invalid", "CompartmentDefinition.resource must be a list", f"{root}.resource")
    compartment: Compartment = {}
    for index, entry in enumerate(entries):
        where = f"{root}.resource[{index}]"
        rtype, params = (entry.get("code"), entry.get("param", [])) if isinstance(entry, dict) else (None, None)
        if not isinstance(rtype, str) or rtype not in fhir.resource_types:
            raise BadRequest(422, "invalid", f"{where}.code: {rtype!r} is not a FHIR {fhir.fhir_version} resource type", where)
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise BadRequest(422, "invalid", f"{where}.param must be a list of search parameter names", where)
        for param in params:
            if fhir.reference_paths(rtype, param) is None:
                raise BadRequest(422, "invalid",
                                 f"{where}.param: '{param}' is not a reference search parameter of {rtype}", where)
        if params:  # entries repeating a type add to it: none may silently replace another
            compartment[rtype] = tuple(dict.fromkeys((*compartment.get(rtype, ()), *params)))
    if not compartment:
        raise BadRequest(422, "invalid", "the CompartmentDefinition needs at least one resource with a "
                         "non-empty param list", f"{root}.resource")
    return compartment
