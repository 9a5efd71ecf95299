"""LinuxForHealth (formerly IBM) FHIR Server: instance ``$erase`` with a required ``reason``.

``patient`` names the compartment the erased resource belongs to; it is sent for a Patient (its
own id), which is the case the server insists on. No real server runs here: the shape is tested
against a scripted upstream.
"""

from __future__ import annotations

from typing import Any

from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind

REASON = "erasure carried out by purgeproxy"


class LinuxForHealth(ServerKind):
    name = "linuxforhealth"
    hard_delete_method = "LinuxForHealth $erase"
    software_names = ("ibm fhir", "linuxforhealth")
    requires_operation = "erase"
    instance_operation = "$erase"

    def operation_parameters(self, key: Key) -> dict[str, Any]:
        # the caller's own reason when it gave one (it is in the receipt too), else ours
        parameters = [{"name": "reason", "valueString": ERASURE_REASON.get() or REASON}]
        if key[0] == "Patient":
            parameters.append({"name": "patient", "valueString": key[1]})
        return {"resourceType": "Parameters", "parameter": parameters}
