"""LinuxForHealth (formerly IBM) FHIR Server: instance ``$erase`` with a required ``reason``.

``patient`` names the compartment the erased resource belongs to; it is sent for a Patient (its
own id), which is the case the server insists on. No real server runs here: the shape is tested
against a scripted upstream.
"""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind, call_ok, declares, software

REASON = "erasure carried out by purgeproxy"


class LinuxForHealth(ServerKind):
    name = "linuxforhealth"
    hard_delete_method = "LinuxForHealth $erase"

    def detects(self, capability: dict[str, Any]) -> bool:
        name = software(capability)
        return ("ibm fhir" in name or "linuxforhealth" in name) and declares(capability, "erase")

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        parameters = [{"name": "reason", "valueString": REASON}]
        if key[0] == "Patient":
            parameters.append({"name": "patient", "valueString": key[1]})
        body = {"resourceType": "Parameters", "parameter": parameters}
        return await call_ok(client, "POST", f"{key[0]}/{key[1]}/$erase", "$erase", json=body)
