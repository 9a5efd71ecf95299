"""Correlation: the request id on every log line of its request (audit lines included), on the
proxy's own upstream calls (and on an asynchronous job's, as the id of the request that created
it); refused destructive requests audited; the upstream's detection and the console format."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from purgeproxy.fhir.client import FhirClient
from purgeproxy.logs import bind_request_id
from tests import log_capture
from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, texts, until_done
from tests.served import serving

_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class Recorder:
    """A small upstream in front of the Medplum engine that records each request's X-Request-Id."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.seen: list[tuple[str, str | None]] = []  # (method path, X-Request-Id)
        self.http = httpx.AsyncClient(timeout=120)

    async def forward(self, request: web.Request) -> web.Response:
        self.seen.append((f"{request.method} {request.path}", request.headers.get("X-Request-Id")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        answer = await self.http.request(request.method, self.target + request.path_qs, headers=headers,
                                         content=await request.read())
        return web.Response(status=answer.status_code, body=answer.content,
                            headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP})


@pytest.fixture
async def recorder(medplum_base: str) -> AsyncIterator[tuple[Recorder, str]]:
    """The recorder and its base URL (same path as the Medplum engine's)."""
    origin, _, path = medplum_base.partition("://")[2].partition("/")
    recording = Recorder(f"http://{origin}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording.forward)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield recording, str(server.make_url("/" + path))
    await server.close()
    await recording.http.aclose()


def _events(since: int) -> list[dict[str, Any]]:
    """The proxy's own (structlog) log lines since ``since``, as logged, context included."""
    events = []
    for line in log_capture.LINES[since:]:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # another library's line, captured as its bare message
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


async def test_a_purge_sends_its_request_id_on_every_upstream_call(make_proxy, recorder, medplum_base) -> None:
    recording, base = recorder
    proxy = await make_proxy(base, auth={"admin_token": TOKEN})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)  # directly: a blocking write would stall the recorder
    recording.seen.clear()
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge",
                                 headers={**AUTH, "X-Request-Id": "corr-sync-1"})
    assert answer.status_code == 200 and answer.json()["issue"][0]["code"] == "success", texts(answer.json())
    assert len(recording.seen) > 5  # metadata, searches, the delete transaction, verification
    assert {rid for _, rid in recording.seen} == {"corr-sync-1"}, recording.seen


async def test_an_async_job_carries_the_id_of_the_request_that_created_it(make_proxy, recorder, medplum_base) -> None:
    recording, base = recorder
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={"poll_seconds": 0.1})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    recording.seen.clear()
    since = len(log_capture.LINES)
    async with httpx.AsyncClient(timeout=120) as http:
        accepted = await http.post(f"{proxy}/Patient/{seed.patient}/$purge",
                                   headers={**ASYNC, "X-Request-Id": "corr-async-1"})
        assert accepted.status_code == 202, accepted.text
        status = await until_done(http, accepted.headers["Content-Location"], timeout=60)
    assert status.status_code == 200, status.text
    assert len(recording.seen) > 5
    assert {rid for _, rid in recording.seen} == {"corr-async-1"}, recording.seen
    job_lines = [e for e in _events(since) if e["event"] in ("job_started", "job_finished", "audit")]
    assert {e["event"] for e in job_lines} == {"job_started", "job_finished", "audit"}
    assert all(e["request_id"] == "corr-async-1" and e.get("job_id") for e in job_lines), job_lines


async def test_a_many_patient_job_s_children_carry_the_request_id(make_proxy, recorder, medplum_base) -> None:
    """Each patient's child job runs on any worker, later: its log lines and upstream calls still
    carry the id of the request that created the parent."""
    recording, base = recorder
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={"poll_seconds": 0.1})
    built = [seeds.build(sizes={"Observation": 2}, shared=False) for _ in range(2)]
    for seed in built:
        seeds.write(medplum_base, seed.resources)
    recording.seen.clear()
    since = len(log_capture.LINES)
    body = {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": s.patient} for s in built]}
    async with httpx.AsyncClient(timeout=120) as http:
        accepted = await http.post(f"{proxy}/Patient/$bulk-purge", json=body,
                                   headers={**ASYNC, "X-Request-Id": "corr-bulk-1"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.headers["Content-Location"].rsplit("/", 1)[1]
        status = await until_done(http, f"{proxy}/$async/{job_id}", timeout=60)
    assert status.status_code == 200, status.text
    assert {rid for _, rid in recording.seen} == {"corr-bulk-1"}, recording.seen
    started = [e for e in _events(since) if e["event"] == "job_started"]
    assert len({e["job_id"] for e in started}) == 3  # the parent and one child per patient
    assert all(e["request_id"] == "corr-bulk-1" for e in started), started


async def test_every_log_line_of_a_purge_carries_its_request_id(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN})
    seed = seeds.build(sizes={"Observation": 3, "Condition": 2}, shared=False)
    seeds.write(medplum_base, seed.resources)
    since = len(log_capture.LINES)
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge", headers=AUTH)  # id made by the proxy
    assert answer.status_code == 200
    rid = answer.headers["X-Request-Id"]
    events = _events(since)
    assert {"request", "audit"} <= {e["event"] for e in events}
    assert all(e.get("request_id") == rid for e in events), [e for e in events if e.get("request_id") != rid]


@respx.mock
async def test_the_fhir_client_sends_the_bound_request_id_and_only_then() -> None:
    route = respx.get("http://upstream.test/fhir/metadata").mock(
        return_value=httpx.Response(200, json={"resourceType": "CapabilityStatement"}))

    async def call(rid: str | None) -> str | None:
        if rid is not None:
            bind_request_id(rid)
        async with httpx.AsyncClient() as http:
            await FhirClient("http://upstream.test/fhir", http).capabilities()
        return route.calls.last.request.headers.get("X-Request-Id")

    assert await asyncio.create_task(call("abc-123")) == "abc-123"
    assert await asyncio.create_task(call(None)) is None  # a task of its own: nothing bound


def _refusals(since: int) -> list[dict[str, Any]]:
    return [e for e in _events(since) if e["event"] == "audit" and e.get("outcome") == "refused"]


def _refused_count() -> float:
    return REGISTRY.get_sample_value("purgeproxy_operations_total", {"operation": "$purge", "verdict": "refused"}) or 0.0


async def _post(url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(url, headers=headers)


async def test_refused_destructive_requests_are_audited(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN, "max_concurrent_per_caller": 1},
                             purge={"max_without_confirm": 1}, jobs={"workers": 0})
    read_only = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, safety={"read_only": True})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.in_scope)
    patient = seed.patient
    cases = [
        (f"{proxy}/Patient/{patient}/$purge", {"X-Request-Id": "refused-401"}, 401, None),
        (f"{proxy}/Patient/{patient}/$purge", {"Authorization": "Bearer wrong-token-x", "X-Request-Id": "refused-403a"},
         403, None),
        (f"{read_only}/Patient/{patient}/$purge", {**AUTH, "X-Request-Id": "refused-403"}, 403, None),
        (f"{proxy}/Patient/{patient}/$purge", {**AUTH, "X-Request-Id": "refused-422"}, 422, "operator"),
    ]
    log_capture.register_secret("wrong-token-x")
    refused_before = _refused_count()
    for url, headers, status, caller in cases:
        since = len(log_capture.LINES)
        answer = await _post(url, headers)
        assert answer.status_code == status, answer.text
        lines = _refusals(since)
        assert len(lines) == 1, lines
        line = lines[0]
        assert (line["operation"], line["patient_id"], line["status"], line["request_id"]) == \
            ("$purge", patient, status, headers["X-Request-Id"])
        assert (line["caller"] is None) == (caller is None), line
    # 429: the caller's one slot is held by a queued job (no workers run it)
    first = await _post(f"{proxy}/Patient/p{uuid.uuid4().hex[:10]}/$purge?confirm=true", ASYNC)
    assert first.status_code == 202, first.text
    since = len(log_capture.LINES)
    throttled = await _post(f"{proxy}/Patient/{patient}/$purge?confirm=true", {**ASYNC, "X-Request-Id": "refused-429"})
    assert throttled.status_code == 429, throttled.text
    assert [(e["status"], e["request_id"]) for e in _refusals(since)] == [(429, "refused-429")]
    # a malformed request is answered 400 and is not a refusal of a destructive operation
    since = len(log_capture.LINES)
    assert (await _post(f"{proxy}/Patient/{patient}/$purge?dryRun=maybe", AUTH)).status_code == 400
    assert _refusals(since) == []
    assert _refused_count() - refused_before == len(cases) + 1  # and counted in the metrics
    assert seeds.snapshot(medplum_base, seed.in_scope) == before  # nothing was deleted


def test_console_format_and_the_detected_upstream_at_start(medplum_base: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"upstream": {"url": medplum_base}, "logging": {"format": "console"},
                                      "jobs": {"store": str(tmp_path / "jobs.sqlite3")}}))
    with serving(config, tmp_path) as proxy:
        httpx.get(f"{proxy.base}/Patient", headers={"X-Request-Id": "console-1"}, timeout=30)
        for _ in range(100):
            text = proxy.log.read_text()
            if "upstream_detected" in text and "console-1" in text:
                break
            time.sleep(0.1)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines), lines[:5]
    detected = next(line for line in lines if "upstream_detected" in line)
    assert "kind=" in detected and "fhir_version=4.0.1" in detected and "hard_delete_method=" in detected
    request = next(line for line in lines if "request_id=console-1" in line)
    assert "status=200" in request and "path=/fhir/Patient" in request
