"""Parsing and validating operation input: ``Parameters`` bodies and query parameters.

Pure functions raising ``BadRequest``: a request is either fully understood or refused with a
precise OperationOutcome before anything reaches the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from purgeproxy.engine.compartment import Compartment
from purgeproxy.fhir.definitions import FhirDefinitions
from purgeproxy.fhir.outcome import OutcomeError

JSON_TYPES = ("application/fhir+json", "application/json")


class BadRequest(OutcomeError):
    """The request is not understood as sent (400, 413, 415, 422); nothing reached the upstream."""


@dataclass(frozen=True)
class PurgeInput:
    dry_run: bool
    compartment_definition: dict[str, Any] | None  # validated later, against the FHIR version
    confirm: bool = False  # allows deleting more than purge.max_without_confirm
    remove_references: bool = False  # _remove-references: kept referrers lose their references


def _boolean(value: str, where: str) -> bool:
    if value not in ("true", "false"):
        raise BadRequest(400, "invalid", f"{where} must be 'true' or 'false'", where)
    return value == "true"


def parse_query(query: Mapping[str, str], allowed: frozenset[str]) -> dict[str, str]:
    """The operation's query parameters; unknown or repeated ones are refused."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        name = unknown[0][:64]
        raise BadRequest(400, "not-supported", f"unknown parameter '{name}'", name)
    for name in query:
        if len(query.getall(name)) > 1:  # type: ignore[attr-defined]
            raise BadRequest(400, "invalid", f"parameter '{name}' is repeated", name)
    return dict(query)


def parse_parameters(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The request's ``Parameters`` resource, or None for an empty body."""
    if not body.strip():
        return None
    if content_type not in JSON_TYPES:
        raise BadRequest(415, "not-supported", "the body must be application/fhir+json")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "structure", "the body is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested arrays: small enough to pass the size limit
        raise BadRequest(400, "structure", "the body nests JSON too deeply") from None
    if not isinstance(document, dict) or document.get("resourceType") != "Parameters":
        raise BadRequest(422, "invalid", "the body must be a Parameters resource", "Parameters")
    parameters = document.get("parameter", [])
    if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
        raise BadRequest(400, "structure", "Parameters.parameter must be a list of objects",
                         "Parameters.parameter")
    return document


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


def parse_purge(query: Mapping[str, str], body: bytes, content_type: str) -> PurgeInput:
    flags = _query_booleans(query)
    definition = None
    document = parse_parameters(body, content_type)
    for index, parameter in enumerate((document or {}).get("parameter", [])):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name")
        if name in BOOLEAN_PARAMETERS and isinstance(parameter.get("valueBoolean"), bool):
            _body_boolean(flags, parameter, where)
        elif name == "compartmentDefinition" and isinstance(parameter.get("resource"), dict):
            if definition is not None:
                raise BadRequest(400, "invalid", "compartmentDefinition is given twice", where)
            definition = parameter["resource"]
        elif name in (*BOOLEAN_PARAMETERS, "compartmentDefinition"):
            raise BadRequest(400, "invalid", f"parameter '{name}' has the wrong type", where)
        else:
            raise BadRequest(400, "not-supported", f"unknown parameter '{_printable(name)}'", where)
    return PurgeInput(flags.get("dryRun", False), definition, flags.get("confirm", False),
                      flags.get("_remove-references", False))


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
