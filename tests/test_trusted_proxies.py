"""The URLs the proxy writes (Location of a create, async status URLs) come from
``server.public_url``, else from a trusted reverse proxy's forwarded headers, else from the
address the client connected to; never from an untrusted client's Host or X-Forwarded-*."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from purgeproxy.forwarding import forwarded_origin, is_trusted
from tests.helpers import AUTH, TOKEN

SPOOF = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
         "Forwarded": 'host="evil.example";proto=https'}
FHIR = {"Content-Type": "application/fhir+json"}


async def _create(proxy: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **headers})
    assert answer.status_code == 201, answer.text
    return answer


async def _status_url(proxy: str, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/Patient/nobody/$purge",
                                 headers={**AUTH, "Prefer": "respond-async", **headers})
    assert answer.status_code == 202, answer.text
    return answer.headers["Content-Location"]


def _settings(**server: Any) -> dict[str, Any]:
    return {"server": server, "auth": {"admin_token": TOKEN}, "jobs": {"workers": 0}}


async def test_an_untrusted_client_does_not_decide_the_urls(make_proxy: Any, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, **_settings())
    assert (await _create(proxy, SPOOF)).headers["Location"].startswith(f"{proxy}/Patient/")
    assert (await _status_url(proxy, SPOOF)).startswith(f"{proxy}/$async/")


@pytest.mark.parametrize("forwarded", [
    {"X-Forwarded-Host": "evil.example, lb.example:8443", "X-Forwarded-Proto": "https"},
    {"Forwarded": 'host="evil.example";proto=http, host="lb.example:8443";proto=https'},
])
async def test_a_trusted_proxy_decides_them(make_proxy: Any, medplum_base: str,
                                            forwarded: dict[str, str]) -> None:
    proxy = await make_proxy(medplum_base, **_settings(trusted_proxies=["127.0.0.0/8"]))
    location = (await _create(proxy, forwarded)).headers["Location"]
    assert location.startswith("https://lb.example:8443/fhir/Patient/"), location
    assert (await _status_url(proxy, forwarded)).startswith("https://lb.example:8443/fhir/$async/")
    assert (await _create(proxy, {"Host": "evil.example"})).headers["Location"].startswith(f"{proxy}/Patient/")


async def test_public_url_wins_over_everything(make_proxy: Any, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, **_settings(public_url="https://fhir.example/api",
                                                       trusted_proxies=["127.0.0.0/8"]))
    assert (await _create(proxy, SPOOF)).headers["Location"].startswith("https://fhir.example/api/Patient/")
    assert (await _status_url(proxy, SPOOF)).startswith("https://fhir.example/api/$async/")


def _headers(**pairs: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in pairs.items()}))


@pytest.mark.parametrize("host", ["evil.example/path", "a b", "x@evil", "lb.example:99999999", 'a"b'])
def test_forwarded_values_that_are_not_a_host_are_ignored(host: str) -> None:
    assert forwarded_origin(_headers(X_Forwarded_Host=host)) is None
    assert forwarded_origin(_headers(X_Forwarded_Host="lb.example", X_Forwarded_Proto="javascript")) is None


def test_trusted_peers() -> None:
    import ipaddress

    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert is_trusted("10.2.3.4", nets) and is_trusted("fd00::1", nets)
    assert not is_trusted("192.0.2.1", nets) and not is_trusted(None, nets) and not is_trusted("x", nets)
    assert forwarded_origin(_headers(X_Forwarded_Host="[::1]:8443")) == ("http", "[::1]:8443")


async def _seen_upstream(medplum_base: str, request_id: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=60) as http:
        seen = (await http.get(medplum_base.replace("/fhir", "/__debug/last-requests"))).json()
    return next(r for r in reversed(seen) if r["headers"].get("x-request-id") == request_id)["headers"]


@pytest.mark.parametrize("server, expected", [
    ({}, None),
    ({"public_url": "https://fhir.example/api"}, ("https", "fhir.example", "/api")),
    ({"trusted_proxies": ["127.0.0.1/32"]}, ("https", "lb.example", "/fhir")),
])
async def test_the_upstream_is_told_the_same_public_base(make_proxy: Any, medplum_base: str,
                                                         server: dict[str, Any], expected: Any) -> None:
    proxy = await make_proxy(medplum_base, **_settings(**server))
    rid = "fwd-" + server.get("public_url", "x")[-3:] + str(len(server))
    async with httpx.AsyncClient(timeout=60) as http:
        await http.get(f"{proxy}/Patient?_count=1", headers={
            "Host": "evil.example", "X-Forwarded-Host": "lb.example", "X-Forwarded-Proto": "https",
            "X-Request-Id": rid})
    sent = await _seen_upstream(medplum_base, rid)
    scheme, host, prefix = expected or ("http", proxy.split("/")[2], "/fhir")
    assert (sent["x-forwarded-proto"], sent["x-forwarded-host"], sent["x-forwarded-prefix"]) == (scheme, host, prefix)
