"""HAPI FHIR JPA (and Smile CDR): ``$expunge`` at every level, when the server enables it.

Hard delete of a deleted resource is instance ``$expunge`` with ``expungeDeletedResources`` only:
HAPI then removes every version of the resource, and only if it is still deleted when the
expunge runs. ``expungePreviousVersions`` is not sent: on a resource written again between the
proxy's DELETE and the expunge it removed the old versions (those the proxy examined, which are
what could restore it) and kept the new one the proxy never saw; without it HAPI removes nothing
(``count`` 0), which is reported as a failed hard delete while the resource's history is still
served (a count of 0 with no history left is an expunge that another one beat). Without expunge
enabled the server does not declare the operation, and the kind falls back to generic.

Measured on HAPI 8.4 (issue 14), nothing removes a chosen set of resources' history in fewer
requests safely. A ``POST Type/id/$expunge`` entry in a batch Bundle is not run as the operation:
HAPI stores the ``Parameters`` body as a new resource (201, ``Parameters/<n>``; hapi-fhir#4158),
so it must never be sent that way. Type-level ``$expunge`` removes every deleted resource of the
type (other patients' too). ``DELETE Type?_id=...&_expunge=true`` and ``$delete-expunge`` start
a batch2 job (the answer only names it): 300 resources took 167 s to disappear, and its last step
removes by database id what its first step found, without looking at the version again, so a
change in between would be removed unseen. So the hard delete stays one instance ``$expunge`` per
resource, several in flight; reading histories back is batched (GET entries are reads).
"""

from __future__ import annotations

from typing import Any

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.history import instance_history
from purgeproxy.fhir.references import Key
from purgeproxy.servers.base import ALL_LEVELS, ServerKind
from purgeproxy.servers.expunge import expunged_count

_EXPUNGE_DELETED = {
    "resourceType": "Parameters",
    "parameter": [{"name": "expungeDeletedResources", "valueBoolean": True}],
}
WRITTEN_AGAIN = ("HAPI's $expunge removed nothing: the resource is not deleted any more (written again "
                 "after the proxy deleted it); its history is kept")


class Hapi(ServerKind):
    name = "hapi"
    hard_delete_method = "HAPI $expunge (expungeDeletedResources)"
    software_names = ("hapi", "smile")
    requires_operation = "expunge"
    instance_operation = "$expunge"
    expunge_levels = ALL_LEVELS
    expunge_keeps_current = True
    normalises_references = True
    history_window = True

    def operation_parameters(self, key: Key) -> dict[str, Any]:
        return _EXPUNGE_DELETED

    async def removed_nothing(self, client: FhirClient, key: Key, body: Any) -> str | None:
        """A ``count`` of 0: HAPI found the resource live again, or found nothing left because
        another expunge got there first (two children of one cohort purge both delete a resource
        in both members' compartments; CI saw the second called written again). Only a history
        still served means written again; with none there is nothing to remove, and the history
        read-back after the hard delete still checks it."""
        if expunged_count(body) != 0:
            return None
        history = await client.request("GET", instance_history(key))
        return None if history.serves_no_history else WRITTEN_AGAIN
