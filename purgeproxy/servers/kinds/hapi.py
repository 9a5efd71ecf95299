"""HAPI FHIR JPA (and Smile CDR): ``$expunge`` at every level, when the server enables it.

Hard delete of a deleted resource is instance ``$expunge`` with both ``expungeDeletedResources``
and ``expungePreviousVersions``: the first removes the deletion marker's resource, the second the
older versions. Without expunge enabled the server does not declare the operation, and the kind
falls back to generic.
"""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ALL_LEVELS, ServerKind

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
    software_names = ("hapi", "smile")
    requires_operation = "expunge"
    instance_operation = "$expunge"
    expunge_levels = ALL_LEVELS
    expunge_keeps_current = True
    normalises_references = True

    def operation_parameters(self, key: Key) -> dict[str, Any]:
        return _EXPUNGE_BOTH
