"""LinuxForHealth FHIR Server: $erase with a reason, and patient for a Patient (scripted)."""

from __future__ import annotations

import json

import pytest
import respx

from purgeproxy.engine.reason import ERASURE_REASON
from purgeproxy.fhir.client import FhirClient
from purgeproxy.servers.registry import detect, kind_named
from tests.fake_upstream import BASE
from tests.kinds.conftest import statement


@pytest.mark.parametrize(("document", "name"), [
    (statement("IBM FHIR Server", "erase"), "linuxforhealth"),
    (statement("LinuxForHealth FHIR Server", "erase"), "linuxforhealth"),
    (statement("LinuxForHealth FHIR Server"), "generic"),  # $erase not enabled
])
def test_detection(document: dict, name: str) -> None:
    assert detect(document).name == name


@respx.mock
async def test_erase_sends_a_reason_and_the_patient_of_a_patient(client: FhirClient) -> None:
    kind = kind_named("linuxforhealth")
    observation = respx.post(f"{BASE}/Observation/o1/$erase").respond(200, json={"resourceType": "Parameters"})
    patient = respx.post(f"{BASE}/Patient/p1/$erase").respond(200, json={"resourceType": "Parameters"})
    assert await kind.hard_delete(client, ("Observation", "o1")) is None
    assert await kind.hard_delete(client, ("Patient", "p1")) is None
    sent = {p["name"]: p["valueString"] for p in json.loads(observation.calls.last.request.content)["parameter"]}
    assert set(sent) == {"reason"} and sent["reason"]
    sent = {p["name"]: p["valueString"] for p in json.loads(patient.calls.last.request.content)["parameter"]}
    assert sent["patient"] == "p1"


@respx.mock
async def test_erase_sends_the_callers_reason(client: FhirClient) -> None:
    """The caller's ``reason`` (the one its receipt carries) is the reason LinuxForHealth records."""
    kind = kind_named("linuxforhealth")
    erase = respx.post(f"{BASE}/Observation/o1/$erase").respond(200, json={"resourceType": "Parameters"})
    token = ERASURE_REASON.set("Art. 17 request 42")
    try:
        assert await kind.hard_delete(client, ("Observation", "o1")) is None
    finally:
        ERASURE_REASON.reset(token)
    sent = {p["name"]: p["valueString"] for p in json.loads(erase.calls.last.request.content)["parameter"]}
    assert sent["reason"] == "Art. 17 request 42"
