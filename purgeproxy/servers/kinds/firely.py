"""Firely Server: instance ``$erase`` (Scale and CMS editions, when the plugin is loaded)."""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind, call_ok, declares, software


class Firely(ServerKind):
    name = "firely"
    hard_delete_method = "Firely $erase"

    def detects(self, capability: dict[str, Any]) -> bool:
        name = software(capability)
        return ("firely" in name or "vonk" in name) and declares(capability, "erase")

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        return await call_ok(client, "POST", f"{key[0]}/{key[1]}/$erase", "$erase")
