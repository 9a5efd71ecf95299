"""The public conformance TestScript for ``Patient/[id]/$purge`` (WildFHIR CE R4, its JSON and its
XML variant), replayed step by step through the proxy on the real upstreams.

Setup: delete the known Observation, then the known Patient (200, 204 or 404), update (PUT) the
Patient, then the Observation (200 or 201). Test: ``$purge`` of the Patient answers 200 with an
OperationOutcome carrying an information issue; reading the Observation and the Patient then
answers 404. Every step is sent in the variant's format; the Medplum engine speaks only JSON, so
there the setup steps go in JSON while the proxy's own answer still comes in the format asked.
(The script's own assertion spells the severity ``infomation``, which no server can satisfy:
the replay checks the FHIR code ``information``.) The fixtures are written here, not copied.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from purgeproxy.fhir.xml import from_xml, tables_for, to_xml
from tests import seed as seeds
from tests.helpers import TOKEN

MIME = {"json": "application/fhir+json", "xml": "application/fhir+xml"}


def fixtures(tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    patient = {"resourceType": "Patient", "id": f"{tag}-purge", "active": True,
               "identifier": [{"system": "http://example.org/identifiers", "value": f"{tag}-mrn"}],
               "name": [{"family": "Scriptpatient", "given": ["Testa"]}], "gender": "female",
               "birthDate": "1990-02-03",
               "address": [{"type": "physical", "line": ["1 Test Road"], "city": "Testville", "postalCode": "00000"}]}
    observation = {"resourceType": "Observation", "id": f"{tag}-obs", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
                   "subject": {"reference": f"Patient/{tag}-purge"},
                   "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                                     "code": "/min"}}
    return patient, observation


def _body(resource: dict[str, Any], fmt: str) -> bytes:
    if fmt == "xml":
        return to_xml(resource, tables_for("4.0.1")).encode()
    return httpx.Request("PUT", "http://x", json=resource).content


def _resource(answer: httpx.Response, fmt: str) -> dict[str, Any]:
    assert answer.headers["Content-Type"].startswith(MIME[fmt]), answer.headers
    return from_xml(answer.content, tables_for("4.0.1")) if fmt == "xml" else answer.json()


async def replay(proxy: str, fmt: str, setup_fmt: str) -> None:
    """The TestScript's setup and test, every step asserted as the script asserts it."""
    patient, observation = fixtures(seeds.new_tag())
    setup = {"Accept": MIME[setup_fmt], "Content-Type": MIME[setup_fmt]}
    async with httpx.AsyncClient(timeout=120) as http:
        for resource in (observation, patient):  # order matters for referential integrity
            deleted = await http.delete(f"{proxy}/{resource['resourceType']}/{resource['id']}", headers=setup)
            assert deleted.status_code in (200, 204, 404), deleted.text
        for resource in (patient, observation):
            updated = await http.put(f"{proxy}/{resource['resourceType']}/{resource['id']}",
                                     content=_body(resource, setup_fmt), headers=setup)
            assert updated.status_code in (200, 201), updated.text
            assert _resource(updated, setup_fmt)["id"] == resource["id"]

        purged = await http.post(f"{proxy}/Patient/{patient['id']}/$purge",
                                 headers={"Accept": MIME[fmt], "Authorization": f"Bearer {TOKEN}"})
        assert purged.status_code == 200, purged.text
        outcome = _resource(purged, fmt)
        assert outcome["resourceType"] == "OperationOutcome"
        assert any(i["severity"] == "information" for i in outcome["issue"]), outcome
        assert outcome["issue"][0]["code"] == "success", outcome

        for resource in (observation, patient):
            read = await http.get(f"{proxy}/{resource['resourceType']}/{resource['id']}", headers={"Accept": MIME[fmt]})
            assert read.status_code == 404, (resource["resourceType"], read.status_code, read.text[:300])


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_the_testscript_on_the_medplum_engine(make_proxy, medplum_base, fmt) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN})
    await replay(proxy, fmt, setup_fmt="json")


@pytest.mark.hapi
@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_the_testscript_on_hapi(make_proxy, hapi_base, fmt) -> None:
    proxy = await make_proxy(hapi_base, auth={"admin_token": TOKEN})
    await replay(proxy, fmt, setup_fmt=fmt)
