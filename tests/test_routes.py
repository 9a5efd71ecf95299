"""The proxy's own routes: health, readiness, and the CapabilityStatement with our operations."""

from __future__ import annotations

import httpx
import pytest


async def test_health_and_readiness_with_a_live_upstream(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    root = proxy.removesuffix("/fhir")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{root}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{root}/readyz")).json() == {"status": "ready"}


@pytest.mark.hapi
async def test_metadata_advertises_purge_on_the_patient_resource(make_proxy, hapi_base) -> None:
    proxy = await make_proxy(hapi_base)
    async with httpx.AsyncClient() as http:
        direct = (await http.get(f"{hapi_base}/metadata")).json()
        served = (await http.get(f"{proxy}/metadata")).json()
    assert served["resourceType"] == "CapabilityStatement"
    patient = next(r for r in served["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "purge", "definition": "http://hl7.org/fhir/build/OperationDefinition/Patient-purge"} in patient["operation"]
    assert served["software"] == direct["software"]
    assert len(served["rest"][0]["resource"]) == len(direct["rest"][0]["resource"])


async def test_metadata_that_is_not_a_capability_statement_passes_unchanged(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    async with httpx.AsyncClient() as http:
        direct = (await http.get(f"{medplum_base}/metadata")).json()
        served = (await http.get(f"{proxy}/metadata")).json()
    assert served == direct


async def test_xml_metadata_is_passed_through_untouched(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    async with httpx.AsyncClient() as http:
        direct = await http.get(f"{medplum_base}/metadata?_format=xml")
        served = await http.get(f"{proxy}/metadata?_format=xml")
    assert (served.status_code, served.content) == (direct.status_code, direct.content)
