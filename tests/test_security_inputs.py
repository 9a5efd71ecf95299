"""Bad input of every kind against ``$purge``: the table of tricks and rails, then hypothesis.

Each refusal has its status and OperationOutcome, and respx proves that the upstream saw nothing
(or, for the confirmation rail, only reads). The property tests throw arbitrary paths, queries and
bodies at the proxy: no 500, no hang, and every upstream request it does make has the validated
shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import respx
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from purgeproxy.fhir.definitions import definitions_for
from purgeproxy.fhir.references import ID_RULE
from purgeproxy.operations.params import BadRequest, compartment_from, parse_purge
from tests import log_capture
from tests.fake_upstream import BASE, scripted_upstream, upstream_calls, writes

TOKEN = "requests-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    for router in scripted_upstream():
        router.route(host="upstream.test").respond(404, json={"resourceType": "OperationOutcome", "issue": []})
        yield router


async def post_raw(proxy: str, tail: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """POST with the path exactly as given: no client-side normalisation of dots or escapes."""
    async with aiohttp.ClientSession() as session:
        url = yarl.URL(f"{proxy}/{tail}", encoded=True)
        async with session.post(url, headers=headers or {}, data=body) as answer:
            text = await answer.text()
            return answer.status, dict(answer.headers), json.loads(text) if text else None


TRICKS = [
    # (id, raw path under the FHIR base, status, issue code, text fragment)
    ("dot-dot", "Patient/../$purge", 400, "invalid", "dot segments"),
    ("encoded-dot-dot", "Patient/%2e%2e/$purge", 400, "invalid", "dot segments"),
    ("single-dot", "Patient/./$purge", 400, "invalid", "dot segments"),
    ("encoded-slash", "Patient/a%2Fb/$purge", 400, "invalid", "FHIR id rule"),
    ("encoded-dot-dot-slash", "Patient/..%2F/$purge", 400, "invalid", "FHIR id rule"),
    ("encoded-question-mark", "Patient/a%3Fb/$purge", 400, "invalid", "FHIR id rule"),
    ("encoded-hash", "Patient/a%23b/$purge", 400, "invalid", "FHIR id rule"),
    ("encoded-nul", "Patient/p1%00/$purge", 400, "invalid", "FHIR id rule"),
    ("encoded-newline", "Patient/p1%0A/$purge", 400, "invalid", "FHIR id rule"),  # `$` matches before it
    ("encoded-crlf", "Patient/p1%0D%0A/$purge", 400, "invalid", "FHIR id rule"),
    ("empty-segment", "Patient//$purge", 400, "invalid", "empty segments"),
    ("bad-confirm", "Patient/p1/$purge?confirm=yes", 400, "invalid", "confirm must be"),
    ("repeated-confirm", "Patient/p1/$purge?confirm=true&confirm=true", 400, "invalid", "repeated"),
    ("query-value-never-echoed", "Patient/p1/$purge?dryRun=canary-query-value", 400, "invalid", "dryRun must be"),
]


@pytest.mark.parametrize(("tail", "status", "code", "text"), [t[1:] for t in TRICKS], ids=[t[0] for t in TRICKS])
async def test_path_and_query_tricks_never_reach_the_upstream(make_proxy, upstream, tail, status, code, text) -> None:
    log_capture.register_secret("canary-query-value")
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    got, _, outcome = await post_raw(proxy, tail, AUTH)
    assert (got, outcome["issue"][0]["code"]) == (status, code)
    assert text in outcome["issue"][0]["diagnostics"] and "canary" not in json.dumps(outcome)
    assert upstream_calls(upstream) == []


BODIES = [
    ("confirm-wrong-type", {"resourceType": "Parameters", "parameter": [{"name": "confirm", "valueString": "true"}]},
     400, "wrong type"),
    ("confirm-conflict", {"resourceType": "Parameters", "parameter": [{"name": "confirm", "valueBoolean": False}]},
     400, "different values"),
    ("huge-parameter-name", {"resourceType": "Parameters", "parameter": [{"name": "x" * 5000}]}, 400, "unknown parameter"),
    ("parameter-name-not-text", {"resourceType": "Parameters", "parameter": [{"name": {"nested": 1}}]},
     400, "unknown parameter 'dict'"),
    ("array-body", [1, 2], 422, "Parameters"),
]


@pytest.mark.parametrize(("body", "status", "text"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES])
async def test_parameters_bodies_are_refused_without_upstream_writes(make_proxy, upstream, body, status, text) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    got, _, outcome = await post_raw(proxy, "Patient/p1/$purge?confirm=true",
                                     {**AUTH, "Content-Type": "application/fhir+json"}, json.dumps(body).encode())
    assert got == status and text in outcome["issue"][0]["diagnostics"]
    assert len(outcome["issue"][0]["diagnostics"]) < 300
    assert writes(upstream) == []


async def test_more_than_max_without_confirm_is_refused_with_the_count(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 1})
    got, _, outcome = await post_raw(proxy, "Patient/p1/$purge", AUTH)
    assert got == 422 and outcome["issue"][0]["code"] == "business-rule"
    assert "would delete 3 resources, more than 1" in outcome["issue"][0]["diagnostics"]
    assert writes(upstream) == []
    body = json.dumps({"resourceType": "Parameters", "parameter": [{"name": "confirm", "valueBoolean": True}]})
    got, _, _ = await post_raw(proxy, "Patient/p1/$purge", {**AUTH, "Content-Type": "application/fhir+json"}, body.encode())
    assert got == 200 and writes(upstream)


async def test_a_caller_past_its_concurrency_limit_gets_429_with_retry_after(make_proxy, upstream) -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow_patient(_request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})

    upstream.routes[2].side_effect = slow_patient  # GET Patient/p1, the engine's first read
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN, "max_concurrent_per_caller": 1,
                                         "retry_after_seconds": 7})
    first = asyncio.create_task(post_raw(proxy, "Patient/p1/$purge?dryRun=true", AUTH))
    await asyncio.wait_for(entered.wait(), 10)
    got, headers, outcome = await post_raw(proxy, "Patient/p1/$purge?dryRun=true", AUTH)
    release.set()
    assert (got, headers.get("Retry-After"), outcome["issue"][0]["code"]) == (429, "7", "throttled")
    assert (await first)[0] == 200


def test_the_log_check_notices_a_leak() -> None:
    """The autouse log check (conftest) would fail a test that logged a token."""
    from purgeproxy.logs import get_logger

    since = len(log_capture.LINES)
    get_logger("test").info("oops", header="Bearer abc", path="/fhir/Patient?name=x")
    assert len(log_capture.leaks(since)) == 1
    del log_capture.LINES[since:]  # keep the check of this very test green


# --- properties -------------------------------------------------------------------------------

R4 = definitions_for("4.0.1")
NAMES = st.sampled_from(["dryRun", "confirm", "compartmentDefinition", "x", "", "_format"])
VALUES = st.one_of(st.booleans(), st.text(max_size=8), st.integers(), st.none(),
                   st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
PARAMETER = st.dictionaries(st.sampled_from(["name", "valueBoolean", "valueString", "resource", "part"]),
                            st.one_of(NAMES, VALUES), max_size=3)
DOCUMENT = st.one_of(
    st.fixed_dictionaries({"resourceType": st.just("Parameters"), "parameter": st.lists(PARAMETER, max_size=4)}),
    st.dictionaries(st.text(max_size=12), VALUES, max_size=3), st.lists(VALUES, max_size=3), VALUES)
QUERY = st.lists(st.tuples(NAMES, st.sampled_from(["true", "false", "", "yes", "1"])), max_size=3)
CONTENT_TYPES = st.sampled_from(["application/fhir+json", "application/json", "text/plain", ""])


@settings(max_examples=300, deadline=None)
@given(query=QUERY, document=DOCUMENT, content_type=CONTENT_TYPES, raw=st.booleans(), junk=st.binary(max_size=40))
def test_parameters_parsing_only_ever_refuses_with_bad_request(query, document, content_type, raw, junk) -> None:
    body = junk if raw else json.dumps(document).encode()
    try:
        given_ = parse_purge(MultiDict(query), body, content_type)
    except BadRequest as refusal:
        assert refusal.status in (400, 413, 415, 422)
        return
    assert isinstance(given_.dry_run, bool) and isinstance(given_.confirm, bool)
    if given_.compartment_definition is not None:
        try:
            compartment_from(given_.compartment_definition, R4)
        except BadRequest:
            pass


SEGMENT = st.text(alphabet="abcAZ09-._~%2fF3e5c0$!*'();:@&=+,", min_size=0, max_size=20)
UPSTREAM_SHAPE = re.compile(r"^/fhir(/metadata|/[A-Z][A-Za-z]+(/(?P<id>[^/]+)(/_history)?)?)?$")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segment=SEGMENT, query=QUERY, document=DOCUMENT, content_type=CONTENT_TYPES)
async def test_no_input_crashes_hangs_or_escapes_the_validated_shape(make_proxy, upstream, segment, query, document,
                                                                     content_type) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    upstream.calls.clear()
    tail = f"Patient/{segment}/$purge?" + "&".join(f"{k}={v}" for k, v in query)
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    status, _, _ = await asyncio.wait_for(post_raw(proxy, tail, headers, json.dumps(document).encode()), 20)
    assert status < 500 or status == 502 and not ID_RULE.match(segment)  # 502: pass-through, no upstream
    reached = [call.request for call in upstream.calls if call.request.url.host == "upstream.test"]
    for request in reached:
        shape = UPSTREAM_SHAPE.match(request.url.path)
        assert shape and (shape["id"] is None or ID_RULE.match(shape["id"])), request.url.path
    if any(r.method != "GET" or r.url.path != "/fhir/metadata" for r in reached):
        assert ID_RULE.match(segment) and segment not in (".", "..")  # only a validated id gets this far
