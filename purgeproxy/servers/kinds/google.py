"""Google Cloud Healthcare API FHIR stores: ``Resource-purge``.

``DELETE [type]/[id]/$purge`` removes every historical version of a resource except the current
one; after the proxy's own DELETE the current version is the deletion marker, so nothing of the
resource's content is left. Not a FHIR operation, so the statement does not declare it; the kind
is recognised by the software name. No real server runs here: the shape is tested against a
scripted upstream.
"""

from __future__ import annotations

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ServerKind, call_ok


class Google(ServerKind):
    name = "google"
    hard_delete_method = "Google Cloud Healthcare Resource-purge ($purge)"
    software_names = ("cloud healthcare",)

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        return await call_ok(client, "DELETE", f"{key[0]}/{key[1]}/$purge", "Resource-purge")
