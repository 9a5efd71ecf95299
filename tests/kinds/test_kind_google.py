"""Google Cloud Healthcare API: Resource-purge after the delete (scripted: no server here)."""

from __future__ import annotations

import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


def test_detection() -> None:
    assert detect(statement("Cloud Healthcare API")).name == "google"


@respx.mock
async def test_hard_delete_purges_the_history_of_the_deleted_resource(client: FhirClient) -> None:
    kind = kind_named("google")
    route = respx.delete(f"{BASE}/Observation/o1/$purge").respond(200, json={})
    assert await kind.hard_delete(client, ("Observation", "o1")) is None
    assert route.called and route.calls.last.request.content == b""
    respx.delete(f"{BASE}/Observation/o2/$purge").respond(403, json={"resourceType": "OperationOutcome"})
    assert await kind.hard_delete(client, ("Observation", "o2")) == "Resource-purge answered 403"
