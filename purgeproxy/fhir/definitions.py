"""The FHIR definitions the engine needs, per FHIR version, loaded from the shipped data files.

The data (``fhir/data/*.json``) is generated from the official packages by
``tools/gen_fhir_data.py``: resource types, every reference search parameter with the element
paths it indexes, and the official Patient CompartmentDefinition.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

_FILES = {"4.0": "r4", "4.3": "r4b", "5.0": "r5"}


@dataclass(frozen=True)
class ReferencePath:
    """Where a search parameter finds references: dotted element steps, each possibly a list."""

    steps: tuple[str, ...]
    target_type: str | None  # set when the expression says ``resolve() is <Type>``
    filtered: bool  # the expression has a ``where`` we do not evaluate: never trust a match

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ReferencePath:
        return cls(tuple(data["path"].split(".")), data.get("type"), bool(data.get("where")))


@dataclass(frozen=True)
class FhirDefinitions:
    fhir_version: str
    resource_types: frozenset[str]
    reference_params: dict[str, dict[str, tuple[ReferencePath, ...]]]
    patient_compartment: dict[str, tuple[str, ...]]
    # resource type -> reference search param -> the types it may point at (reverse searches)
    reference_targets: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)

    def reference_paths(self, resource_type: str, param: str) -> tuple[ReferencePath, ...] | None:
        """The paths of a reference search parameter, or None when it is not one."""
        return self.reference_params.get(resource_type, {}).get(param)

    def params_targeting(self, target_type: str) -> list[tuple[str, str]]:
        """Every (type, param) whose references may point at ``target_type``, sorted."""
        return sorted((rtype, param) for rtype, params in self.reference_targets.items()
                      for param, targets in params.items() if target_type in targets)


@cache
def known_resource_types() -> frozenset[str]:
    """The resource types of every shipped FHIR version: what a type name in the configuration
    may be before the upstream's version is known."""
    return frozenset().union(*(definitions_for(version).resource_types for version in _FILES))


def type_name_problem(names: Iterable[str], known: frozenset[str], kind: str) -> str | None:
    """Why the first of ``names`` not in ``known`` is wrong, with the name likely meant; or None.

    A misspelt type name must never silently match nothing: ``Auditevent`` in
    ``purge.excluded_types`` would let every AuditEvent be deleted.
    """
    for name in names:
        if name not in known:
            meant = next((t for t in sorted(known) if t.lower() == name.lower()), None)
            return f"'{name}' is not a {kind}" + (f"; did you mean '{meant}'?" if meant else "")
    return None


@cache
def definitions_for(fhir_version: str) -> FhirDefinitions:
    """Definitions for a ``fhirVersion`` such as ``4.0.1``; ``KeyError`` when not shipped."""
    key = ".".join(fhir_version.split(".")[:2])
    if key not in _FILES:
        raise KeyError(fhir_version)
    text = resources.files("purgeproxy.fhir").joinpath(f"data/{_FILES[key]}.json").read_text("utf-8")
    data = json.loads(text)
    return FhirDefinitions(
        fhir_version=data["fhirVersion"],
        resource_types=frozenset(data["resourceTypes"]),
        reference_params={
            rtype: {
                param: tuple(ReferencePath.from_data(p) for p in spec["paths"])
                for param, spec in params.items()
            }
            for rtype, params in data["referenceParams"].items()
        },
        patient_compartment={k: tuple(v) for k, v in data["patientCompartment"].items()},
        reference_targets={
            rtype: {param: frozenset(spec.get("targets") or ()) for param, spec in params.items()}
            for rtype, params in data["referenceParams"].items()
        },
    )
