"""The proxy's own upstream credentials: added to its calls to the upstream only, cached and
renewed, never sent elsewhere, never on a request made for a client."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx

from purgeproxy.config import UpstreamAuth
from purgeproxy.fhir.client import FhirClient, UpstreamError
from purgeproxy.fhir.upstream_auth import upstream_auth
from tests import log_capture

BASE = "http://upstream.test/fhir"
TOKEN_URL = "http://login.test/token"
SECRET = "client-secret-value"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("TEST_UPSTREAM_TOKEN", "static-upstream-token")
    log_capture.register_secret(SECRET, "static-upstream-token", "issued-1", "issued-2", "s3cr3t-pw")


async def client_with(settings: dict[str, object]) -> AsyncIterator[FhirClient]:
    token_http = httpx.AsyncClient()
    auth = upstream_auth(BASE, UpstreamAuth.model_validate(settings), token_http)
    async with httpx.AsyncClient(auth=auth) as http:
        yield FhirClient(BASE, http)
    await token_http.aclose()


CLIENT_CREDENTIALS = {"type": "client_credentials", "token_url": TOKEN_URL, "client_id": "purgeproxy",
                      "client_secret": {"env": "TEST_CLIENT_SECRET"}, "scope": "system/*.cruds"}


@pytest.fixture
async def cc_client() -> AsyncIterator[FhirClient]:
    async for client in client_with(CLIENT_CREDENTIALS):
        yield client


def authorization(call: respx.models.Call) -> str | None:
    return call.request.headers.get("Authorization")


@respx.mock
async def test_client_credentials_token_is_fetched_once_and_reused(cc_client) -> None:
    token = respx.post(TOKEN_URL).respond(200, json={"access_token": "issued-1", "expires_in": 3600})
    patient = respx.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    for _ in range(3):
        await cc_client.request("GET", "Patient/p1")
    assert token.call_count == 1
    form = token.calls[0].request.content.decode()
    assert "grant_type=client_credentials" in form and "scope=system%2F%2A.cruds" in form
    expected = "Basic " + base64.b64encode(f"purgeproxy:{SECRET}".encode()).decode()
    assert authorization(token.calls[0]) == expected
    assert {authorization(c) for c in patient.calls} == {"Bearer issued-1"}


@respx.mock
async def test_a_token_about_to_expire_is_replaced(cc_client) -> None:
    token = respx.post(TOKEN_URL).mock(side_effect=[
        httpx.Response(200, json={"access_token": "issued-1", "expires_in": 30}),  # inside the margin
        httpx.Response(200, json={"access_token": "issued-2", "expires_in": 3600}),
    ])
    patient = respx.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Patient"})
    await cc_client.request("GET", "Patient/p1")
    await cc_client.request("GET", "Patient/p1")
    assert token.call_count == 2 and authorization(patient.calls[-1]) == "Bearer issued-2"


@respx.mock
async def test_a_401_renews_the_token_and_retries_once(cc_client) -> None:
    respx.post(TOKEN_URL).mock(side_effect=[
        httpx.Response(200, json={"access_token": "issued-1", "expires_in": 3600}),
        httpx.Response(200, json={"access_token": "issued-2", "expires_in": 3600}),
    ])
    patient = respx.get(f"{BASE}/Patient/p1").mock(side_effect=[
        httpx.Response(401, json={"resourceType": "OperationOutcome"}),
        httpx.Response(200, json={"resourceType": "Patient"}),
    ])
    answer = await cc_client.request("GET", "Patient/p1")
    assert answer.status == 200
    assert [authorization(c) for c in patient.calls] == ["Bearer issued-1", "Bearer issued-2"]


@respx.mock
async def test_a_refused_token_request_is_a_502_without_the_secret(cc_client) -> None:
    respx.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
    with pytest.raises(UpstreamError) as failure:
        await cc_client.request("GET", "Patient/p1")
    assert failure.value.status == 502 and SECRET not in failure.value.text


@respx.mock
async def test_credentials_never_leave_the_upstream_base(cc_client) -> None:
    respx.post(TOKEN_URL).respond(200, json={"access_token": "issued-1", "expires_in": 3600})
    elsewhere = respx.get("http://evil.test/fhir/Observation").respond(200, json={"resourceType": "Bundle"})
    sibling = respx.get("http://upstream.test/fhir-admin/x").respond(200, json={})
    await cc_client.request("GET", "http://evil.test/fhir/Observation?page=2")  # a paging link
    await cc_client.request("GET", "http://upstream.test/fhir-admin/x")
    assert authorization(elsewhere.calls[0]) is None and authorization(sibling.calls[0]) is None


@respx.mock
async def test_metadata_fetched_for_a_client_carries_the_clients_credentials_only(cc_client) -> None:
    token = respx.post(TOKEN_URL).respond(200, json={"access_token": "issued-1", "expires_in": 3600})
    metadata = respx.get(f"{BASE}/metadata").respond(200, json={"resourceType": "CapabilityStatement"})
    await cc_client.capabilities({})
    await cc_client.capabilities({"Authorization": "Bearer the-clients-own"})
    assert [authorization(c) for c in metadata.calls] == [None, "Bearer the-clients-own"]
    assert token.call_count == 0
    await cc_client.capabilities()  # the proxy's own look at the upstream
    assert authorization(metadata.calls[-1]) == "Bearer issued-1"


@respx.mock
async def test_static_bearer_from_env_and_basic_with_a_password_file(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cr3t-pw\n")
    route = respx.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Patient"})
    async for client in client_with({"type": "bearer", "token": {"env": "TEST_UPSTREAM_TOKEN"}}):
        await client.request("GET", "Patient/p1")
    async for client in client_with({"type": "basic", "username": "proxy", "password": {"file": str(password)}}):
        await client.request("GET", "Patient/p1")
    assert authorization(route.calls[0]) == "Bearer static-upstream-token"
    assert authorization(route.calls[1]) == "Basic " + base64.b64encode(b"proxy:s3cr3t-pw").decode()


def test_incomplete_upstream_auth_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="needs token_url, client_id, client_secret"):
        UpstreamAuth.model_validate({"type": "client_credentials"})
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE is not set"):
        UpstreamAuth.model_validate({"type": "bearer", "token": {"env": "NOT_SET_ANYWHERE"}})
