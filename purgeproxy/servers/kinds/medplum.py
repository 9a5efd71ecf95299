"""Medplum: instance ``$expunge`` only, and it always removes the whole resource with its history."""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import INSTANCE, ServerKind, call_ok, software


class Medplum(ServerKind):
    name = "medplum"
    hard_delete_method = "Medplum $expunge"
    expunge_levels = frozenset({INSTANCE})

    def detects(self, capability: dict[str, Any]) -> bool:
        return "medplum" in software(capability)

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        return await call_ok(client, "POST", f"{key[0]}/{key[1]}/$expunge", "$expunge")
