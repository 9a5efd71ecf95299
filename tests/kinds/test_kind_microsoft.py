"""Microsoft's FHIR server: hard delete is DELETE ?hardDelete=true (scripted: no server here)."""

from __future__ import annotations

import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


def test_detection() -> None:
    assert detect(statement("Microsoft FHIR Server")).name == "microsoft"


@respx.mock
async def test_hard_delete_is_a_delete_with_hard_delete_true(client: FhirClient) -> None:
    kind = kind_named("microsoft")
    route = respx.delete(f"{BASE}/Observation/o1", params={"hardDelete": "true"}).respond(204)
    assert await kind.hard_delete(client, ("Observation", "o1")) is None
    assert route.called
    respx.delete(f"{BASE}/Observation/o2", params={"hardDelete": "true"}).respond(403)
    assert await kind.hard_delete(client, ("Observation", "o2")) == "DELETE ?hardDelete=true answered 403"
