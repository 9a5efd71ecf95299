"""One structured access-log line per request, without query values."""

from __future__ import annotations

import httpx
from structlog.testing import capture_logs


async def test_each_request_logs_id_path_status_and_latency_but_no_query(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    with capture_logs() as events:
        async with httpx.AsyncClient() as http:
            await http.get(f"{proxy}/Patient?family=Secretfamilyname&_count=1",
                           headers={"X-Request-Id": "log-check-7"})
    lines = [e for e in events if e["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "log-check-7"
    assert (line["method"], line["path"], line["status"], line["upstream_status"]) == ("GET", "/fhir/Patient", 200, 200)
    assert line["latency_ms"] >= 0
    assert "Secretfamilyname" not in repr(events)


async def test_generated_request_ids_are_returned_to_the_client(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base)
    with capture_logs() as events:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{proxy}/Patient?_count=1")
    assert answer.headers["X-Request-Id"] == events[-1]["request_id"]
    assert len(answer.headers["X-Request-Id"]) == 32
