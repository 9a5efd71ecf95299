"""Any other server: soft delete only, and what is not a CapabilityStatement is generic."""

from __future__ import annotations

import pytest

from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.kinds.conftest import statement


@pytest.mark.parametrize("document", [
    statement("Some FHIR server", "expunge"),  # declaring $expunge is not enough: whose shape?
    {"resourceType": "Bundle", "type": "searchset", "total": 0},  # the bare Medplum engine
    "not json at all",
    None,
])
def test_detected_for_anything_else(document: object) -> None:
    assert detect(document).name == "generic"


async def test_has_no_hard_delete(client: FhirClient) -> None:
    kind = kind_named("generic")
    assert kind.hard_delete_method is None and kind.expunge_levels == frozenset()
    assert await kind.hard_delete(client, ("Observation", "o1")) == "this upstream offers no hard delete"
