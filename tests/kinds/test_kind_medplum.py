"""Medplum: detection and its instance $expunge (the bare engine has none: see test_purge)."""

from __future__ import annotations

import respx

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.base import INSTANCE
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


def test_detection() -> None:
    assert detect(statement("Medplum")).name == "medplum"


@respx.mock
async def test_expunge_at_instance_level_only(client: FhirClient) -> None:
    kind = kind_named("medplum")
    route = respx.post(f"{BASE}/Observation/o1/$expunge").respond(200, json={"resourceType": "OperationOutcome"})
    assert await kind.hard_delete(client, ("Observation", "o1")) is None
    assert route.called and kind.expunge_levels == frozenset({INSTANCE}) and not kind.expunge_keeps_current
