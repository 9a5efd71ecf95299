"""HAPI FHIR JPA (and Smile CDR): ``$expunge`` at every level, when the server enables it.

Hard delete of a deleted resource is instance ``$expunge`` with both ``expungeDeletedResources``
and ``expungePreviousVersions``: the first removes the deletion marker's resource, the second the
older versions. Without expunge enabled the server does not declare the operation, and the kind
falls back to generic.
"""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ALL_LEVELS, ServerKind, call_ok, declares, software

_EXPUNGE_BOTH = {
    "resourceType": "Parameters",
    "parameter": [
        {"name": "expungeDeletedResources", "valueBoolean": True},
        {"name": "expungePreviousVersions", "valueBoolean": True},
    ],
}


class Hapi(ServerKind):
    name = "hapi"
    hard_delete_method = "HAPI $expunge (expungeDeletedResources, expungePreviousVersions)"
    expunge_levels = ALL_LEVELS
    expunge_keeps_current = True

    def detects(self, capability: dict[str, Any]) -> bool:
        name = software(capability)
        return ("hapi" in name or "smile" in name) and declares(capability, "expunge")

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        return await call_ok(client, "POST", f"{key[0]}/{key[1]}/$expunge", "$expunge", json=_EXPUNGE_BOTH)
