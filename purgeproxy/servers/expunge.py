"""The upstreams' own expunge operations: which levels each kind has, and calling them.

HAPI FHIR JPA (expunge enabled) has ``$expunge`` at system, type, instance and version level with
``limit``, ``expungeDeletedResources``, ``expungePreviousVersions`` and ``expungeEverything``, and
answers ``Parameters.count``. Medplum's ``$expunge`` exists at instance level only and always
removes the whole resource. Other servers have none: the proxy never pretends otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.base import INSTANCE, SYSTEM, TYPE, VERSION, ServerKind

__all__ = ["INSTANCE", "SYSTEM", "TYPE", "VERSION", "ExpungeOptions", "expunged_count", "has_native_expunge",
           "native_expunge"]


@dataclass(frozen=True)
class ExpungeOptions:
    """HAPI's ``$expunge`` parameters; ``given`` False means none were sent (Medplum's shape)."""

    limit: int | None = None
    deleted_resources: bool = False
    previous_versions: bool = False
    everything: bool = False
    given: bool = False

    @property
    def selects_anything(self) -> bool:
        return self.deleted_resources or self.previous_versions or self.everything

    def parameters(self) -> dict[str, Any]:
        """The HAPI ``Parameters`` body carrying these options."""
        listed: list[dict[str, Any]] = []
        if self.limit is not None:
            listed.append({"name": "limit", "valueInteger": self.limit})
        for name, value in (("expungeDeletedResources", self.deleted_resources),
                            ("expungePreviousVersions", self.previous_versions),
                            ("expungeEverything", self.everything)):
            if value:
                listed.append({"name": name, "valueBoolean": True})
        return {"resourceType": "Parameters", "parameter": listed}


def has_native_expunge(kind: ServerKind, level: str) -> bool:
    """Whether the upstream kind's own ``$expunge`` exists at ``level``."""
    return level in kind.expunge_levels


async def native_expunge(client: FhirClient, path: str, options: ExpungeOptions) -> tuple[int | None, str | None]:
    """Call the upstream's ``[path/]$expunge``: (versions removed if it says, error or None)."""
    target = f"{path}/$expunge" if path else "$expunge"
    answer = await client.request("POST", target, json=options.parameters())
    if not 200 <= answer.status < 300:
        return None, f"the upstream's $expunge answered {answer.status}"
    return expunged_count(answer.body), None


def expunged_count(body: Any) -> int | None:
    """HAPI's ``Parameters.count`` (versions removed), or None when the answer does not say."""
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter", []):
            count = parameter.get("valueInteger")
            if parameter.get("name") == "count" and isinstance(count, int):
                return count
    return None
