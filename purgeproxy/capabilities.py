"""Advertising the proxy's own operations in the upstream's CapabilityStatement.

FHIR clients discover operations from ``metadata``: system-level ones in ``rest[].operation``,
type- and instance-level ones in ``rest[].resource[type=X].operation``. The upstream's statement
is kept as it is otherwise, so that clients keep seeing what the upstream itself supports.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AdvertisedOperation:
    """One operation the proxy carries out; ``resource_type`` None means system level."""

    name: str
    definition: str
    resource_type: str | None = None

    def entry(self) -> dict[str, str]:
        return {"name": self.name, "definition": self.definition}


def advertise(statement: dict[str, Any], operations: list[AdvertisedOperation]) -> dict[str, Any]:
    """A copy of ``statement`` listing ``operations``, replacing upstream entries of the same name."""
    result = copy.deepcopy(statement)
    rests = result.setdefault("rest", [])
    server = next((r for r in rests if r.get("mode") == "server"), None)
    if server is None:
        server = {"mode": "server"}
        rests.append(server)
    for operation in operations:
        holder = server if operation.resource_type is None else _resource(server, operation.resource_type)
        listed = [o for o in holder.get("operation", []) if o.get("name") != operation.name]
        holder["operation"] = listed + [operation.entry()]
    return result


def _resource(server: dict[str, Any], resource_type: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = server.setdefault("resource", [])
    for resource in resources:
        if resource.get("type") == resource_type:
            return resource
    resource = {"type": resource_type}
    resources.append(resource)
    return resource
