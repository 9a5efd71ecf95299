"""Microsoft's FHIR server (Azure Health Data Services, fhir-server OSS).

Its hard delete is a DELETE with ``hardDelete=true``, which removes the resource with every
version, also after a soft delete. Referential integrity is not enforced, so it never answers 409.
No real server runs here: the shape is tested against a scripted upstream.
"""

from __future__ import annotations

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind, call_ok


class Microsoft(ServerKind):
    name = "microsoft"
    hard_delete_method = "Microsoft DELETE ?hardDelete=true"
    software_names = ("microsoft",)

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        return await call_ok(client, "DELETE", f"{key[0]}/{key[1]}", "DELETE ?hardDelete=true",
                             params={"hardDelete": "true"})
