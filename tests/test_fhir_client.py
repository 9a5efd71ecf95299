"""The proxy's own FHIR client turns every transport failure into a 502 or 504 (respx faults)."""

from __future__ import annotations

import gc
import weakref

import httpx
import pytest
import respx

from purgeproxy.fhir.client import FhirClient, UpstreamError
from tests.fake_upstream import BASE


@respx.mock
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (httpx.ConnectTimeout("slow connect"), 504, "timeout"),
        (httpx.ReadTimeout("slow answer"), 504, "timeout"),
        (httpx.ConnectError("refused"), 502, "transient"),
        (httpx.RemoteProtocolError("garbage"), 502, "transient"),
    ],
)
async def test_transport_faults_become_gateway_errors(
    client: FhirClient, fault: Exception, status: int, code: str
) -> None:
    respx.get(f"{BASE}/metadata").mock(side_effect=fault)
    with pytest.raises(UpstreamError) as raised:
        await client.capabilities()
    assert (raised.value.status, raised.value.code) == (status, code)


@respx.mock
async def test_a_non_json_answer_is_malformed(client: FhirClient) -> None:
    respx.get(f"{BASE}/metadata").respond(200, text="<html>oops</html>")
    with pytest.raises(UpstreamError) as raised:
        await client.capabilities()
    assert raised.value.status == 502


@respx.mock
async def test_upstream_errors_with_fhir_bodies_are_answers_not_faults(client: FhirClient) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    respx.get(f"{BASE}/Patient/1").respond(500, json=outcome)
    answer = await client.request("GET", "Patient/1")
    assert (answer.status, answer.resource_type) == (500, "OperationOutcome")


@respx.mock
async def test_requests_ask_for_fhir_json_and_keep_absolute_urls(client: FhirClient) -> None:
    route = respx.get("http://upstream.test/fhir?_getpages=x").respond(200, json={"resourceType": "Bundle"})
    await client.request("GET", "http://upstream.test/fhir?_getpages=x")
    assert route.calls.last.request.headers["Accept"] == "application/fhir+json"


@respx.mock
async def test_every_call_bypasses_upstream_caches(client: FhirClient) -> None:
    """HAPI answers a repeated search from its cache for a minute unless told not to."""
    search = respx.get(f"{BASE}/Observation").respond(200, json={"resourceType": "Bundle"})
    batch = respx.post(BASE).respond(200, json={"resourceType": "Bundle"})
    await client.request("GET", "Observation", params={"subject": "Patient/1"})
    await client.request("POST", "", json={"resourceType": "Bundle", "type": "batch"})
    assert [r.calls.last.request.headers["Cache-Control"] for r in (search, batch)] == ["no-cache"] * 2


@respx.mock
async def test_a_read_dropped_by_the_upstream_is_sent_once_more(client: FhirClient) -> None:
    route = respx.get(f"{BASE}/Patient/1")
    route.side_effect = [httpx.ReadError("connection reset"), httpx.Response(200, json={"resourceType": "Patient"})]
    assert (await client.request("GET", "Patient/1")).status == 200
    assert route.call_count == 2


@respx.mock
async def test_a_write_is_never_repeated(client: FhirClient) -> None:
    route = respx.post(BASE).mock(side_effect=httpx.ReadError("connection reset"))
    with pytest.raises(UpstreamError):
        await client.request("POST", "", json={"resourceType": "Bundle"})
    assert route.call_count == 1


DROPPED = httpx.RemoteProtocolError("Server disconnected without sending a response.")


@respx.mock
@pytest.mark.parametrize(("bundle", "repeated"), [
    ({"type": "batch", "entry": [{"request": {"method": "GET", "url": "Observation?subject=Patient/1"}}]}, True),
    ({"type": "transaction", "entry": [{"request": {"method": "DELETE", "url": "Observation/1"}}]}, True),
    ({"type": "transaction", "entry": [{"request": {"method": "DELETE", "url": "Observation/1"}},
                                       {"request": {"method": "POST", "url": "Observation"},
                                        "resource": {"resourceType": "Observation"}}]}, False),
    ({"type": "transaction", "entry": [{"request": {"method": "PUT", "url": "Observation/1"},
                                        "resource": {"resourceType": "Observation", "id": "1"}}]}, False),
], ids=["batch-of-searches", "deletes", "deletes-and-a-create", "an-update"])
async def test_only_bundles_of_reads_and_deletes_are_sent_again(client: FhirClient, bundle: dict,
                                                                repeated: bool) -> None:
    """A DELETE sent twice finds the resource gone; a create or update sent twice is two writes."""
    route = respx.post(BASE)
    route.side_effect = [DROPPED, httpx.Response(200, json={"resourceType": "Bundle"})]
    if repeated:
        answer = await client.request("POST", "", json={"resourceType": "Bundle", **bundle})
        assert answer.status == 200 and route.call_count == 2
    else:
        with pytest.raises(UpstreamError):
            await client.request("POST", "", json={"resourceType": "Bundle", **bundle})
        assert route.call_count == 1


async def test_a_read_answer_is_freed_without_the_cycle_collector() -> None:
    """httpx's response and its stream reference each other; the body (megabytes for a search
    page) must not wait for the cyclic collector: measured, a 100,000-resource purge's peak RSS
    growth was 96-99 MB with the cycle, 73-74 MB without."""
    answers: list[weakref.ref[httpx.Response]] = []

    async def keep(response: httpx.Response) -> None:
        answers.append(weakref.ref(response))

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"resourceType": "Bundle"}))
    async with httpx.AsyncClient(transport=transport, event_hooks={"response": [keep]}) as http:
        gc.disable()
        try:
            answer = await FhirClient(BASE, http).request("GET", "Observation")
            assert answer.resource_type == "Bundle"
            assert answers and answers[0]() is None
        finally:
            gc.enable()
