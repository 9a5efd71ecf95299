"""The reverse proxy's header and URL rules, checked without sockets."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from purgeproxy.forwarding import (
    Client,
    UrlRewriter,
    client_response_headers,
    end_to_end,
    unsafe_path_reason,
    upstream_request_headers,
)

CLIENT = Client("10.1.2.3", "https", "proxy.example:8443", "/fhir", "rid-1")
REWRITE = UrlRewriter("http://hapi:8080/fhir", "https://proxy.example:8443/fhir")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    kept = end_to_end(
        headers(
            ("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic x"), ("X-Secret-Hop", "1"),
            ("Authorization", "Bearer user"), ("Accept", "application/fhir+json"),
        )
    )
    assert sorted(kept.keys()) == ["Accept", "Authorization"]


def test_upstream_gets_forwarded_headers_and_keeps_end_to_end_ones() -> None:
    sent = upstream_request_headers(
        headers(("Host", "proxy.example:8443"), ("X-Forwarded-For", "192.0.2.1"),
                ("If-Match", 'W/"3"'), ("Cookie", "a=1")),
        CLIENT,
    )
    assert "Host" not in sent
    assert sent["X-Forwarded-For"] == "192.0.2.1, 10.1.2.3"
    assert sent["X-Forwarded-Proto"] == "https"
    assert sent["X-Forwarded-Host"] == "proxy.example:8443"
    assert sent["X-Forwarded-Prefix"] == "/fhir"
    assert sent["Forwarded"] == 'for=10.1.2.3;proto=https;host="proxy.example:8443"'
    assert sent["X-Request-Id"] == "rid-1"
    assert (sent["If-Match"], sent["Cookie"]) == ('W/"3"', "a=1")


def test_ipv6_clients_are_quoted_in_forwarded() -> None:
    sent = upstream_request_headers(headers(), Client("::1", "http", "h", "/fhir", "r"))
    assert sent["Forwarded"].startswith('for="[::1]";')


@pytest.mark.parametrize(
    "raw",
    ["/../admin", "/Patient/..", "/Patient/%2e%2E/x", "/Patient/.", "/Patient%2F1",
     "/Patient%5c1", "/Patient/1%3F_format=xml", "/Patient/1%23x", "//Patient", "/Patient\\1",
     "/a%00b"],
)
def test_paths_that_could_be_normalised_elsewhere_are_refused(raw: str) -> None:
    assert unsafe_path_reason(raw) is not None


@pytest.mark.parametrize(
    "raw", ["", "/", "/Patient/1", "/Patient?name=a%2Fb", "/Patient?x=../y", "/Patient/a.b-1",
            "/Patient/1/_history/2", "/$expunge"],
)
def test_ordinary_paths_are_safe(raw: str) -> None:
    assert unsafe_path_reason(raw) is None


def test_rewriter_maps_only_urls_under_the_upstream_base() -> None:
    assert REWRITE("http://hapi:8080/fhir/Patient/1") == "https://proxy.example:8443/fhir/Patient/1"
    assert REWRITE("http://hapi:8080/fhir?_getpages=x") == "https://proxy.example:8443/fhir?_getpages=x"
    assert REWRITE("http://hapi:8080/fhir") == "https://proxy.example:8443/fhir"
    assert REWRITE("http://hapi:8080/fhirx/Patient") == "http://hapi:8080/fhirx/Patient"
    assert REWRITE("urn:uuid:1") == "urn:uuid:1"


def test_bundle_links_and_full_urls_are_rewritten() -> None:
    bundle = {
        "resourceType": "Bundle",
        "link": [{"relation": "next", "url": "http://hapi:8080/fhir?_getpages=abc&_offset=20"}],
        "entry": [{"fullUrl": "http://hapi:8080/fhir/Patient/1"}, {"fullUrl": "urn:uuid:x"}, {}],
    }
    assert REWRITE.bundle(bundle) is True
    assert bundle["link"][0]["url"] == "https://proxy.example:8443/fhir?_getpages=abc&_offset=20"
    assert bundle["entry"][0]["fullUrl"] == "https://proxy.example:8443/fhir/Patient/1"
    assert bundle["entry"][1]["fullUrl"] == "urn:uuid:x"
    assert REWRITE.bundle(bundle) is False


def test_location_headers_are_rewritten_and_others_kept() -> None:
    out = client_response_headers(
        headers(("Location", "http://hapi:8080/fhir/Patient/1/_history/1"),
                ("Content-Location", "http://elsewhere/x"), ("ETag", 'W/"1"'),
                ("Connection", "close"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
        REWRITE,
    )
    assert out["Location"] == "https://proxy.example:8443/fhir/Patient/1/_history/1"
    assert out["Content-Location"] == "http://elsewhere/x"
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "Connection" not in out and out["ETag"] == 'W/"1"'
