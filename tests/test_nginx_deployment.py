"""The operations-only deployment (deploy/nginx/): Debian's nginx, started on the shipped file.

nginx sends ordinary traffic straight to the upstream and everything else to purgeproxy. Two
proofs, both on the rows of tests/test_routing_table.py (every destructive operation in every
spelling, and each of them inside batch and transaction Bundles posted to the base):

* with spies (small aiohttp servers recording every request) as the upstream behind nginx and as
  the upstream behind purgeproxy: no destructive row reaches either; each is answered by purgeproxy
  with a 4xx OperationOutcome; ordinary requests reach the direct spy exactly as sent;
* with the real Medplum engine behind both: nginx's own log of the backend it chose shows that no
  destructive row went straight to Medplum, ordinary ones did, and the seeded patient, its
  Observation and their ``_history`` are unchanged after the whole table.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import nginx_ops
from bench.targets import free_port
from tests.test_routing_table import (
    FHIR,
    SEEN,
    TOKEN,
    Req,
    Spy,
    _is_proxys_outcome,
    _raw_url,
    _spy_handler,
    bundle_request,
    ordinary,
    send,
    table,
)

ROW_HEADER = "X-Routing-Row"
HEADERS = web.AppKey("headers", list)
_RISKY_HEADERS = ("X-Cascade", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


async def _recording_handler(request: web.Request) -> web.StreamResponse:
    """The routing table's spy, also keeping the names of the risky headers each request had."""
    request.app[HEADERS].append([h for h in _RISKY_HEADERS if h in request.headers])
    return await _spy_handler(request)


# Skipped only outside CI: `make test` (and so CI) installs nginx, and there a missing nginx fails.
pytestmark = pytest.mark.skipif(nginx_ops.nginx_binary() is None and not os.environ.get("CI"),
                                reason="nginx is not installed (make nginx: apt-get install nginx)")


class Nginx:
    """nginx on the rendered deployment file; ``routed()`` reads which backend took each row."""

    def __init__(self, workdir: Path, upstream: str, proxy: str, base: str = "/fhir") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}{base}"
        self.conf = nginx_ops.write_conf(workdir, self.port, base, _hostport(upstream), _hostport(proxy),
                                         log_format_upstream=True)
        binary = nginx_ops.nginx_binary()
        assert binary is not None
        self.process = subprocess.Popen(nginx_ops.argv(binary, workdir, self.conf),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
                try:
                    await http.get(f"http://127.0.0.1:{self.port}/healthz")
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise AssertionError("nginx did not start")

    def routed(self) -> dict[str, list[str]]:
        """Row name -> the backend addresses nginx sent it to (empty: answered by nginx)."""
        rows: dict[str, list[str]] = {}
        for line in (self.workdir / "routed.log").read_text().splitlines():
            row, addresses, _status = line.split("|")
            rows.setdefault(row, []).extend(a for a in addresses.split(", ") if a != "-")
        return rows

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _hostport(url: str) -> str:
    return httpx.URL(url).netloc.decode()


@pytest.fixture
def nginx_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Nginx] = []

    async def start(upstream: str, proxy: str) -> Nginx:
        server = Nginx(tmp_path, upstream, proxy)
        started.append(server)
        await server.ready()
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class RecordingSpy(Spy):
    headers: list[list[str]]


@pytest.fixture
async def spies() -> AsyncIterator[tuple[RecordingSpy, RecordingSpy]]:
    """Two recording upstreams: the one nginx reaches directly, and the one behind purgeproxy."""
    servers, made = [], []
    for _ in range(2):
        app = web.Application()
        app[SEEN] = []
        app[HEADERS] = []
        app.router.add_route("*", "/{tail:.*}", _recording_handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        made.append(RecordingSpy(str(server.make_url("")).rstrip("/"), app[SEEN], app[HEADERS]))
    yield made[0], made[1]
    for server in servers:
        await server.close()


async def _send_row(http: httpx.AsyncClient, base: str, name: str, req: Req) -> httpx.Response:
    """Like the routing table's ``send``, with the row's name for nginx's log and repeated
    headers kept (two copies of one header are one of the spellings here)."""
    headers = [*req.headers, (ROW_HEADER, name)]
    content = None
    if req.body is not None:
        content = json.dumps(req.body).encode()
        headers.append(("Content-Type", FHIR))
    return await http.request(req.method, _raw_url(base, req.target), headers=headers, content=content)


async def test_no_destructive_spelling_gets_past_nginx_or_purgeproxy(make_proxy, spies, nginx_for) -> None:
    direct, behind = spies
    proxy = await make_proxy(f"{behind.url}/fhir", auth={"admin_token": TOKEN})
    nginx = await nginx_for(f"{direct.url}/fhir", proxy)
    rows = table("p1", "o1")
    failures = []
    async with httpx.AsyncClient(timeout=30) as http:
        for name, req in rows.items():
            answer = await _send_row(http, nginx.base_url, name, req)
            if not (400 <= answer.status_code < 500 and _is_proxys_outcome(answer)):
                failures.append(f"{name}: {req.method} {req.target} -> {answer.status_code}")
        assert failures == [], f"{len(failures)} of {len(rows)} rows: " + "\n".join(failures[:40])
        assert direct.seen == [] and behind.seen == []
        for name, req in _nginx_spellings().items():
            await _send_row(http, nginx.base_url, name, req)
        assert direct.seen == []
        await _assert_all_went_to(nginx, {**rows, **_nginx_spellings()}, proxy)
        for name, req in _hidden_copies().items():
            await _send_row(http, nginx.base_url, name, req)
    # nginx 1.22 sees only a header's first copy: a request whose first copy is empty may go
    # straight on, but without any copy of the header, so the upstream gets a plain request.
    assert direct.headers == [[] for _ in direct.seen]


async def _assert_all_went_to(nginx: Nginx, rows: dict[str, Req], proxy: str) -> None:
    """nginx's log: each row was sent to purgeproxy, and to nothing else."""
    port = _hostport(proxy).rsplit(":", 1)[1]
    routed = nginx.routed()
    for _ in range(20):  # nginx logs a request after answering it: the last line may lag
        if set(rows) <= set(routed):
            break
        await asyncio.sleep(0.1)
        routed = nginx.routed()
    wrong = {name: routed.get(name) for name in rows
             if not routed.get(name) or not all(a.endswith(f":{port}") for a in routed[name])}
    assert wrong == {}, f"not sent to purgeproxy: {list(wrong.items())[:10]}"


async def test_ordinary_requests_go_straight_to_the_upstream_exactly_as_sent(make_proxy, spies, nginx_for) -> None:
    direct, behind = spies
    proxy = await make_proxy(f"{behind.url}/fhir")
    nginx = await nginx_for(f"{direct.url}/fhir", proxy)
    via_proxy = ("everything", "transaction", "batch-slash", "expunge-false")
    straight = {name: req for name, req in ordinary("p1", "o1").items() if name not in via_proxy}
    straight |= {
        "create": Req("POST", "Observation", body={"resourceType": "Observation", "status": "final"}),
        "update": Req("PUT", "Patient/p1", body={"resourceType": "Patient", "id": "p1"}),
        "search-post": Req("POST", "Patient/_search", "name=x"),
        "encoded-value": Req("GET", "Observation", "code=http://loinc.org%7C1234-5&date=ge2024-01-01T00%3A00"),
        "version-read": Req("GET", "Patient/p1/_history/2"),
    }
    async with httpx.AsyncClient(timeout=30) as http:
        for name, req in straight.items():
            before = len(direct.seen)
            answer = await send(http, nginx.base_url, req)
            assert answer.status_code == 200 and len(direct.seen) == before + 1, (name, answer.text)
            method, path, body = direct.seen[before]
            assert (method, path) == (req.method, "/fhir" + req.target), name
            assert body == (json.dumps(req.body).encode() if req.body else b""), name
        assert behind.seen == []
        # What nginx cannot judge by the URL goes to purgeproxy, which classifies and forwards it.
        for name in via_proxy:
            req = ordinary("p1", "o1")[name]
            answer = await send(http, nginx.base_url, req)
            assert answer.status_code == 200, (name, answer.text)
            assert behind.seen[-1][:2] == (req.method, "/fhir" + req.target), name
    assert len(direct.seen) == len(straight)


def _hidden_copies() -> dict[str, Req]:
    """A risky header whose first copy is empty: nginx 1.22 reads only the first."""
    return {
        "nginx:header-empty-then-cascade": Req("DELETE", "Patient/p1",
                                               headers=(("X-Cascade", ""), ("X-Cascade", "delete"))),
        "nginx:override-second-copy": Req("POST", "Patient/p1", headers=(
            ("X-HTTP-Method-Override", ""), ("X-HTTP-Method-Override", "DELETE"))),
    }


def _nginx_spellings() -> dict[str, Req]:
    """Spellings aimed at nginx's own parsing: each must go to purgeproxy, which then decides
    (what it forwards, it forwards because its own rule calls it ordinary)."""
    cascade = Req("DELETE", "Patient/p1", "_cascade=delete")
    return {
        "nginx:dot-base": Req("POST", "/../fhir/Patient/p1/$purge"),
        "nginx:semicolon-query": Req("DELETE", "Patient/p1", "a=1;_cascade=delete"),
        "nginx:plus-flag": Req("DELETE", "Patient/p1", "+_cascade=delete"),
        "nginx:unicode-fold": Req("DELETE", "Patient/p1", "_ca%C5%BFcade=delete"),
        "nginx:fragment": Req("POST", "Patient/p1/%24purge%23x"),
        "nginx:query-in-path": Req("DELETE", "Patient/p1%3F_cascade=delete"),
        "nginx:encoded-method": Req("GET", "Patient/p1", "_m%65thod=DELETE&_cascade=delete"),
        "nginx:batch-cascade-slash": bundle_request("batch", [cascade], "/"),
        "nginx:base-query": Req("POST", "", "x=1", body=bundle_request("batch", [cascade]).body),
    }


# ---- the real upstream -------------------------------------------------------------------

async def test_with_medplum_nothing_destructive_reaches_it_and_the_patient_is_unchanged(
        make_proxy, medplum_base, nginx_for) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN})
    nginx = await nginx_for(medplum_base, proxy)
    medplum_port = _hostport(medplum_base).rsplit(":", 1)[1]
    async with httpx.AsyncClient(timeout=60) as http:
        made = {}
        for name, resource in (("patient", {"resourceType": "Patient", "name": [{"family": "Routed"}]}),):
            answer = await _send_row(http, nginx.base_url, f"seed-{name}", Req("POST", "Patient", body=resource))
            assert answer.status_code == 201, answer.text
            made[name] = answer.json()
        p = made["patient"]["id"]
        observation = {"resourceType": "Observation", "status": "final", "code": {"text": "routed"},
                       "subject": {"reference": f"Patient/{p}"}}
        answer = await _send_row(http, nginx.base_url, "seed-observation", Req("POST", "Observation", body=observation))
        assert answer.status_code == 201, answer.text
        o = answer.json()["id"]
        before = await _snapshot(http, medplum_base, p, o)
        rows = table(p, o)
        failures = []
        for name, req in rows.items():
            answer = await _send_row(http, nginx.base_url, name, req)
            if not (400 <= answer.status_code < 500 and _is_proxys_outcome(answer)):
                failures.append(f"{name}: {req.method} {req.target} -> {answer.status_code}")
        for name, req in ordinary(p, o).items():
            answer = await _send_row(http, nginx.base_url, f"ordinary-{name}", req)
            assert answer.status_code < 500, (name, answer.text)
        after = await _snapshot(http, medplum_base, p, o)
    assert failures == [], f"{len(failures)} of {len(rows)} rows: " + "\n".join(failures[:40])
    assert after == before
    routed = nginx.routed()
    straight = {name for name, addresses in routed.items() if any(a.endswith(f":{medplum_port}") for a in addresses)}
    assert straight.isdisjoint(rows), sorted(straight & set(rows))[:10]
    assert {"seed-patient", "seed-observation", "ordinary-read", "ordinary-search", "ordinary-plain-delete"} <= straight
    assert "ordinary-transaction" not in straight  # a Bundle posted to the base is purgeproxy's to read


async def _snapshot(http: httpx.AsyncClient, base: str, p: str, o: str) -> list[Any]:
    """The resources and their whole history, read from Medplum directly."""
    paths = [f"Patient/{p}", f"Patient/{p}/_history", f"Observation/{o}", f"Observation/{o}/_history"]
    answers = [await http.get(f"{base}/{path}", headers={"Accept": FHIR}) for path in paths]
    assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    return [_without_volatile(a.json()) for a in answers]


def _without_volatile(document: dict[str, Any]) -> dict[str, Any]:
    """A history Bundle's own id, timestamp and links change per read; its entries must not."""
    if document.get("resourceType") == "Bundle":
        return {"entry": document.get("entry"), "total": document.get("total")}
    return document


# ---- targets an HTTP client library would normalise before sending -------------------------

async def _raw(port: int, method: str, target: str, row: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request written byte for byte (httpx removes dot segments even from a raw path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{ROW_HEADER}: {row}\r\n"
            f"Content-Type: {FHIR}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_dot_segments_and_absolute_targets_go_to_purgeproxy(make_proxy, spies, nginx_for) -> None:
    """``POST [base]/Patient/..`` is a POST to the base once the upstream normalises it: its Bundle
    must be read by purgeproxy, like every target nginx would otherwise judge by a form the
    upstream does not see."""
    direct, behind = spies
    proxy = await make_proxy(f"{behind.url}/fhir", auth={"admin_token": TOKEN})
    nginx = await nginx_for(f"{direct.url}/fhir", proxy)
    batch = json.dumps(bundle_request("batch", [Req("DELETE", "Patient/p1", "_cascade=delete")]).body).encode()
    origin = f"http://127.0.0.1:{nginx.port}"
    rows = {
        "raw:dot-dot-base": ("POST", "/fhir/Patient/..", batch),
        "raw:dot-base": ("POST", "/fhir/./", batch),
        "raw:dot-cascade": ("DELETE", "/fhir/./Patient/p1?_cascade=delete", b""),
        "raw:dot-history": ("DELETE", "/fhir/Patient/p1/_history/1/../..", b""),
        "raw:absolute-purge": ("POST", f"{origin}/fhir/Patient/p1/$purge", b""),
        "raw:absolute-base": ("POST", f"{origin}/fhir", batch),
        "raw:absolute-dot-base": ("POST", f"{origin}/fhir/Patient/..", batch),
    }
    for name, (method, target, body) in rows.items():
        status, answer = await _raw(nginx.port, method, target, name, body)
        assert 400 <= status < 500 and b"OperationOutcome" in answer, (name, status, answer[:200])
    assert direct.seen == [] and behind.seen == []
    await _assert_all_went_to(nginx, {name: Req("GET", "") for name in rows}, proxy)
