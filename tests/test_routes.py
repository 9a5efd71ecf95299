"""The proxy's own routes: health, readiness, and the CapabilityStatement with our operations."""

from __future__ import annotations

import httpx
import pytest

from purgeproxy.fhir.xml import from_xml, tables_for
from tests import fhir_schemas


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
    system = {o["name"] for o in served["rest"][0]["operation"]}
    assert {"receipt", "receipt-keys", "reapply", "bulk-delete", "erase", "expunge"} <= system


async def test_metadata_that_is_not_a_capability_statement_passes_unchanged(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    async with httpx.AsyncClient() as http:
        direct = (await http.get(f"{medplum_base}/metadata")).json()
        served = (await http.get(f"{proxy}/metadata")).json()
    assert served == direct


async def test_xml_metadata_is_the_same_document_in_xml(make_proxy, medplum_base) -> None:
    """Issue 18: metadata in XML is the proxy's answer too (the Medplum engine itself answers
    only JSON, and not a CapabilityStatement: the same document, unchanged, in FHIR XML)."""
    proxy = await make_proxy(medplum_base)
    async with httpx.AsyncClient() as http:
        direct = await http.get(f"{medplum_base}/metadata")
        served = await http.get(f"{proxy}/metadata?_format=xml")
    assert served.status_code == direct.status_code
    assert served.headers["Content-Type"].startswith("application/fhir+xml")
    assert from_xml(served.content, tables_for("4.0.1")) == direct.json()


async def test_other_metadata_parameters_pass_through_untouched(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    async with httpx.AsyncClient() as http:
        direct = await http.get(f"{medplum_base}/metadata?mode=terminology&_format=xml")
        served = await http.get(f"{proxy}/metadata?mode=terminology&_format=xml")
    assert (served.status_code, served.content) == (direct.status_code, direct.content)


@pytest.mark.hapi
async def test_xml_metadata_lists_the_proxys_operations(make_proxy, hapi_base) -> None:
    """HAPI's own XML statement does not list ``$purge``; the proxy's does, valid against the
    official R4 schema, and says the same as the proxy's JSON statement."""
    proxy = await make_proxy(hapi_base)
    async with httpx.AsyncClient(timeout=60) as http:
        direct = await http.get(f"{hapi_base}/metadata", headers={"Accept": "application/fhir+xml"})
        served = await http.get(f"{proxy}/metadata", headers={"Accept": "application/fhir+xml"})
        pretty = await http.get(f"{proxy}/metadata?_format=application/fhir%2Bxml&_pretty=true")
        as_json = (await http.get(f"{proxy}/metadata?_format=json")).json()
    assert b"Patient-purge" not in direct.content
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/fhir+xml")
    assert fhir_schemas.problems(served.content, "4.0.1") == []
    statement = from_xml(served.content, tables_for("4.0.1"))
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "purge", "definition": "http://hl7.org/fhir/build/OperationDefinition/Patient-purge"} in patient["operation"]
    stable = lambda document: {k: v for k, v in document.items() if k not in ("id", "date")}  # noqa: E731 - HAPI makes both anew
    assert stable(from_xml(pretty.content, tables_for("4.0.1"))) == stable(statement) == stable(as_json)
