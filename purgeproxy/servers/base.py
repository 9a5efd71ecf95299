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
    """What an upstream kind offers. ``hard_delete_method`` None: soft delete only.

    The hard delete is the upstream's own instance operation, called after the resource was
    deleted; verification reads the history back, so an upstream whose operation does less than
    it says is reported, not believed.
    """

    name: str
    hard_delete_method: str | None
    operation: str = "$expunge"
    parameters: dict[str, Any] | None = None

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        """Remove a deleted resource's history; None on success, else why it failed."""
        if self.hard_delete_method is None:
            return "this upstream offers no hard delete"
        answer = await client.request("POST", f"{key[0]}/{key[1]}/{self.operation}", json=self.parameters)
        if 200 <= answer.status < 300 or answer.status in (404, 410):
            return None
        return f"{self.operation} answered {answer.status}"


GENERIC = ServerKind("generic", None)
HAPI = ServerKind("hapi", "HAPI $expunge (expungeDeletedResources, expungePreviousVersions)",
                  parameters=_EXPUNGE_BOTH)
MEDPLUM = ServerKind("medplum", "Medplum $expunge")
FIRELY = ServerKind("firely", "Firely $erase", operation="$erase")
_KINDS = {kind.name: kind for kind in (GENERIC, HAPI, MEDPLUM, FIRELY)}


def kind_named(name: str) -> ServerKind:
    return _KINDS[name]


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def detect(capability: Any) -> ServerKind:
    """Guess the kind from ``metadata``: ``software.name`` and declared operations."""
    if not isinstance(capability, dict):
        return GENERIC
    if capability.get("resourceType") != "CapabilityStatement":
        return GENERIC  # e.g. the bare Medplum engine: set upstream.kind to say more
    software = str((capability.get("software") or {}).get("name", "")).lower()
    if "hapi" in software or "smile" in software:
        return HAPI if _declares(capability, "expunge") else GENERIC
    if "medplum" in software:
        return MEDPLUM
    if "firely" in software or "vonk" in software:
        return FIRELY if _declares(capability, "erase") else GENERIC
    return GENERIC


def normalises_references(capability: Any) -> bool:
    """HAPI (and Smile CDR) index ``Patient/1/_history/2`` and absolute URLs on their own base as
    ``Patient/1``, with or without expunge enabled; the test suite checks it on a real HAPI."""
    if not isinstance(capability, dict) or capability.get("resourceType") != "CapabilityStatement":
        return False
    software = str((capability.get("software") or {}).get("name", "")).lower()
    return "hapi" in software or "smile" in software


def _declares(capability: dict[str, Any], operation: str) -> bool:
    for rest in capability.get("rest", []):
        names = {o.get("name") for o in rest.get("operation", [])}
        for resource in rest.get("resource", []):
            names |= {o.get("name") for o in resource.get("operation", [])}
        if operation in names:
            return True
    return False

