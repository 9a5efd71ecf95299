"""Requests aiohttp's HTTP parser refuses (over-long request line or header, malformed header):
answered with an OperationOutcome that echoes nothing, logged as structured lines without a
token, a query value or a traceback; in-process and from a real ``purgeproxy serve``."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from yarl import URL

from tests import log_capture
from tests.served import serving

NAME, IDENTIFIER, TOKEN = "Zebulonsecretname", "urn:oid:1.2|SECRETID4711", "parser-test-token-0815"
QUERY = f"name={NAME}&identifier={IDENTIFIER}"
PADDING = "x" * 9000  # past aiohttp's 8190-byte limit
SECRETS = (NAME, "SECRETID4711", TOKEN)

REQUESTS = {
    "long request line": f"GET /fhir/Patient?{QUERY}&pad={PADDING} HTTP/1.1\r\nHost: h\r\n"
                         f"Authorization: Bearer {TOKEN}\r\n\r\n",
    "long header": f"GET /fhir/Patient?{QUERY} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"X-Padding: {PADDING}\r\n\r\n",
    "long credential": f"GET /fhir/Patient?{QUERY} HTTP/1.1\r\nHost: h\r\n"
                       f"Authorization: Bearer {TOKEN}{PADDING}\r\n\r\n",
    "malformed header": f"GET /fhir/Patient?{QUERY} HTTP/1.1\r\nHost: h\r\nBad Header: Bearer {TOKEN}\r\n\r\n",
}


async def exchange(base: str, request: str) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (no client library would send these) and read the answer to the close."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(request.encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def check_answer(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/fhir+json")
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"
    assert not any(secret.encode() in body for secret in SECRETS), body
    assert b"Bearer" not in body and PADDING[:20].encode() not in body


async def test_parser_errors_in_process(make_proxy: Any) -> None:
    log_capture.register_secret(*SECRETS)
    proxy = await make_proxy("http://127.0.0.1:9/fhir")
    since = len(log_capture.LINES)
    for request in REQUESTS.values():
        check_answer(*await exchange(proxy, request))
    logged = [json.loads(line) for line in log_capture.LINES[since:]]
    errors = [line for line in logged if line["event"] == "http_error"]
    assert len(errors) == len(REQUESTS) and {e["status"] for e in errors} == {400}
    assert {e["error"] for e in errors} >= {"LineTooLong", "BadHttpMessage"}
    assert "Traceback" not in "".join(log_capture.LINES[since:])


def test_parser_errors_from_purgeproxy_serve(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"upstream: {{url: 'http://127.0.0.1:9/fhir'}}\njobs: {{store: '{tmp_path}/jobs.db'}}\n")
    with serving(config, tmp_path) as proxy:
        for request in REQUESTS.values():
            check_answer(*asyncio.run(exchange(proxy.base, request)))
        proxy.process.send_signal(signal.SIGTERM)
        proxy.process.wait(30)
    text = proxy.log.read_text()
    assert not any(secret in text for secret in SECRETS) and "Bearer" not in text, text[-3000:]
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert sum(1 for line in lines if line["event"] == "http_error") == len(REQUESTS)


def test_redaction_keeps_the_type_and_frames_of_an_exception_but_not_its_message() -> None:
    from purgeproxy.logs import exception_frames, redact

    try:
        raise ValueError(f"no patient named {NAME}")
    except ValueError as error:
        event = redact(None, "error", exception_frames(None, "error", {
            "event": f"GET /fhir/Patient?name={NAME} Authorization: Bearer {TOKEN}", "exc_info": error}))
    assert event["error"] == "ValueError" and "test_parser_errors.py" in event["frames"][0]
    assert not any(secret in json.dumps(event) for secret in SECRETS) and "exc_info" not in event
    assert event["event"] == "GET /fhir/Patient?[redacted] Authorization: [redacted credentials]"
