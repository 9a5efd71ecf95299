"""Ordinary FHIR traffic through the proxy against real upstreams: nothing changes but the URLs.

Runs against the Medplum engine and, with the ``hapi`` marker, against HAPI FHIR JPA.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

FHIR = "application/fhir+json"


@pytest.fixture(params=["medplum", pytest.param("hapi", marks=pytest.mark.hapi)])
def upstream(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_base")


@pytest.fixture
async def proxy(make_proxy: Any, upstream: str) -> str:
    return await make_proxy(upstream)


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               **headers: str) -> tuple[aiohttp.ClientResponse, Any]:
    data = json.dumps(body) if body is not None else None
    sent = {"Content-Type": FHIR, "Accept": FHIR, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with http.request(method, url, data=data, headers=sent) as response:
        raw = await response.read()
        return response, (json.loads(raw) if raw and "json" in response.content_type else raw)


async def create_patient(http: aiohttp.ClientSession, proxy: str, family: str) -> dict[str, Any]:
    response, patient = await send(http, "POST", f"{proxy}/Patient",
                                   {"resourceType": "Patient", "name": [{"family": family}]})
    assert response.status == 201
    return patient


async def test_create_answers_201_with_location_at_the_proxy(http, proxy) -> None:
    response, patient = await send(http, "POST", f"{proxy}/Patient",
                                   {"resourceType": "Patient", "name": [{"family": "Loc"}]})
    assert response.status == 201
    assert response.headers["Location"].startswith(f"{proxy}/Patient/{patient['id']}")


async def test_read_update_and_conditional_update_with_etag(http, proxy) -> None:
    patient = await create_patient(http, proxy, "Etag")
    url = f"{proxy}/Patient/{patient['id']}"
    response, read = await send(http, "GET", url)
    assert response.status == 200 and read["id"] == patient["id"]
    etag = response.headers["ETag"]
    read["name"] = [{"family": "Changed"}]
    response, updated = await send(http, "PUT", url, read, If_Match=etag)
    assert response.status == 200 and updated["name"][0]["family"] == "Changed"
    response, problem = await send(http, "PUT", url, read, If_Match=etag)  # stale now
    assert response.status in (409, 412)
    assert problem["resourceType"] == "OperationOutcome"


async def test_search_pages_through_the_proxy(http, proxy) -> None:
    family = "Pager"
    for _ in range(5):
        await create_patient(http, proxy, family)
    response, page = await send(http, "GET", f"{proxy}/Patient?family={family}&_count=2")
    assert response.status == 200 and page["type"] == "searchset"
    seen = [e["resource"]["id"] for e in page["entry"]]
    assert all(e["fullUrl"].startswith(proxy) for e in page["entry"] if "fullUrl" in e)
    next_url = next((each["url"] for each in page.get("link", []) if each["relation"] == "next"), None)
    if next_url is None:  # the Medplum engine pages by offset and gives no next link
        assert page["total"] == 5
        _, rest = await send(http, "GET", f"{proxy}/Patient?family={family}&_count=2&_offset=2")
        seen += [e["resource"]["id"] for e in rest["entry"]]
    while next_url:
        assert next_url.startswith(proxy)
        _, page = await send(http, "GET", next_url)
        seen += [e["resource"]["id"] for e in page["entry"]]
        next_url = next((each["url"] for each in page.get("link", []) if each["relation"] == "next"), None)
    assert len(set(seen)) >= 4


async def test_delete_then_read_is_gone(http, proxy) -> None:
    patient = await create_patient(http, proxy, "Gone")
    url = f"{proxy}/Patient/{patient['id']}"
    response, _ = await send(http, "DELETE", url)
    assert response.status in (200, 204)
    response, problem = await send(http, "GET", url)
    assert response.status in (404, 410)
    assert problem["resourceType"] == "OperationOutcome"


async def test_missing_resource_passes_the_upstreams_own_outcome(http, proxy, upstream) -> None:
    async with aiohttp.ClientSession() as direct_http:
        direct, expected = await send(direct_http, "GET", f"{upstream}/Patient/does-not-exist")
    response, body = await send(http, "GET", f"{proxy}/Patient/does-not-exist")
    assert response.status == direct.status == 404
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == expected["issue"][0]["code"]


async def test_transaction_bundle(http, proxy) -> None:
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                          "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response, result = await send(http, "POST", proxy, bundle)
    assert response.status == 200 and result["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in result["entry"]] == ["201", "201"]


async def test_gzip_answer_is_relayed_byte_for_byte(http, proxy, upstream) -> None:
    patient = await create_patient(http, proxy, "Zip")
    path = f"/Patient/{patient['id']}"
    gzipped = {"Accept-Encoding": "gzip", "Accept": FHIR}
    async with aiohttp.ClientSession(auto_decompress=False) as raw_http:
        async with raw_http.get(upstream + path, headers=gzipped) as direct:
            expected = await direct.read()
        async with raw_http.get(proxy + path, headers=gzipped) as response:
            body = await response.read()
            assert response.headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(body))["id"] == patient["id"]
    assert body == expected


async def test_request_id_is_passed_upstream_and_back(http, proxy) -> None:
    async with http.get(f"{proxy}/Patient?_count=1", headers={"X-Request-Id": "trace-42"}) as response:
        assert response.headers["X-Request-Id"] == "trace-42"


async def test_unsafe_paths_never_reach_the_upstream(http, proxy) -> None:
    async with http.get(URL(f"{proxy}/Patient/%2e%2e/metadata", encoded=True)) as response:
        assert response.status == 400
        assert (await response.json(content_type=None))["resourceType"] == "OperationOutcome"


async def test_upstream_sees_end_to_end_and_forwarded_headers_only(http, make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
               "Authorization": "Bearer user-token", "X-Forwarded-For": "192.0.2.7",
               "X-Request-Id": "hdr-check-1"}
    async with http.get(f"{proxy}/Patient?_count=1", headers=headers) as response:
        assert response.status == 200
    async with http.get(medplum_base.replace("/fhir", "/__debug/last-requests")) as response:
        seen = next(r for r in reversed(await response.json()) if r["headers"].get("x-request-id") == "hdr-check-1")
    sent = seen["headers"]
    assert "x-hop" not in sent and "keep-alive" not in sent
    assert sent["authorization"] == "Bearer user-token"
    assert sent["x-forwarded-for"] == "192.0.2.7, 127.0.0.1"
    assert sent["x-forwarded-prefix"] == "/fhir"
    assert sent["x-forwarded-host"] == proxy.split("/")[2]
    assert sent["forwarded"].startswith("for=127.0.0.1;proto=http;host=")
    assert seen["url"] == "/fhir/Patient?_count=1"
