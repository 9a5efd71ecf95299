"""HAPI FHIR JPA (and Smile CDR): ``$expunge`` at every level, when the server enables it.

Hard delete of a deleted resource is instance ``$expunge`` with both ``expungeDeletedResources``
and ``expungePreviousVersions``: the first removes the deletion marker's resource, the second the
older versions. Without expunge enabled the server does not declare the operation, and the kind
falls back to generic.

Measured on HAPI 8.4 (issue 14): it has no way to expunge a chosen set of resources in one request.
A ``POST Type/id/$expunge`` entry in a batch Bundle is not run as the operation: HAPI stores the
``Parameters`` body as a new resource (201, ``Parameters/<n>``; hapi-fhir#4158), so it must never
be sent that way. Type-level ``$expunge`` removes every deleted resource of the type (other
patients' too), and ``$delete-expunge`` deletes live resources by search in a background job,
without the version the proxy examined. So the hard delete stays one instance ``$expunge`` per
resource, several in flight; reading histories back is batched (GET entries are reads).
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
