"""Server kinds and their detection from the CapabilityStatement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key

_EXPUNGE_BOTH = {
    "resourceType": "Parameters",
    "parameter": [
        {"name": "expungeDeletedResources", "valueBoolean": True},
        {"name": "expungePreviousVersions", "valueBoolean": True},
    ],
}


@dataclass(frozen=True)
class ServerKind:
    """What an upstream kind offers. ``hard_delete_method`` None: soft delete only."""

    name: str
    hard_delete_method: str | None

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        """Remove a deleted resource's history; None on success, else why it failed."""
        if self.hard_delete_method is None:
            return "this upstream offers no hard delete"
        answer = await client.request("POST", f"{key[0]}/{key[1]}/$expunge", json=_EXPUNGE_BOTH)
        if 200 <= answer.status < 300 or answer.status in (404, 410):
            return None
        return f"$expunge answered {answer.status}"


GENERIC = ServerKind("generic", None)
HAPI = ServerKind("hapi", "HAPI $expunge (expungeDeletedResources, expungePreviousVersions)")
MEDPLUM = ServerKind("medplum", "Medplum $expunge")
_KINDS = {kind.name: kind for kind in (GENERIC, HAPI, MEDPLUM)}


def kind_named(name: str) -> ServerKind:
    return _KINDS[name]


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def detect(capability: Any) -> ServerKind:
    """Guess the kind from ``metadata``: ``software.name`` and declared operations."""
    if not isinstance(capability, dict):
        return GENERIC
    if capability.get("resourceType") != "CapabilityStatement":
        return MEDPLUM if _looks_like_medplum(capability) else GENERIC
    software = str((capability.get("software") or {}).get("name", "")).lower()
    if "hapi" in software or "smile" in software:
        return HAPI if _declares(capability, "expunge") else GENERIC
    if "medplum" in software:
        return MEDPLUM
    return GENERIC


def _declares(capability: dict[str, Any], operation: str) -> bool:
    for rest in capability.get("rest", []):
        names = {o.get("name") for o in rest.get("operation", [])}
        for resource in rest.get("resource", []):
            names |= {o.get("name") for o in resource.get("operation", [])}
        if operation in names:
            return True
    return False


def _looks_like_medplum(document: dict[str, Any]) -> bool:
    return "medplum" in str(document).lower()[:2000]
