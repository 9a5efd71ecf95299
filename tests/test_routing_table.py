"""The routing table, generated from the rule: every destructive operation in every spelling.

Each request of the table (operation × spelling, and each of them as an entry of a batch and a
transaction Bundle) is sent without a token; it must be answered by the proxy (its own checks:
401, or the routing rule's refusal) and never reach the upstream. A spy upstream (a small aiohttp
server: respx cannot see the aiohttp pass-through) records every request it receives; on real
HAPI a control patient's resources and ``_history`` must be byte-identical after the whole table.
Ordinary requests are sent too, and must arrive at the spy unchanged: the spy is not blind.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from purgeproxy.classify import Inspect, Operation, Ordinary, Refused, classify, classify_body
from tests import seed as seeds

TOKEN = "routing-table-token"
FHIR = "application/fhir+json"


@dataclass(frozen=True)
class Req:
    """One request, relative to the proxy's base; ``path`` and ``query`` are raw (encoded)."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: dict[str, Any] | None = None

    @property
    def target(self) -> str:
        """After the base: ``path`` gets a leading slash unless it has one (``/`` is the base
        with a trailing slash, ``//x`` an empty first segment) or is empty (the base itself)."""
        path = self.path if self.path.startswith("/") or not self.path else "/" + self.path
        return path + (f"?{self.query}" if self.query else "")


def params(**values: Any) -> dict[str, Any]:
    kinds = {bool: "valueBoolean", str: "valueString"}
    return {"resourceType": "Parameters", "parameter": [{"name": k, kinds[type(v)]: v} for k, v in values.items()]}


EXPUNGE = params(expungePreviousVersions=True, expungeDeletedResources=True)


def operations(p: str, o: str) -> dict[str, Req]:
    """Every destructive request in its canonical spelling, aimed at patient ``p`` and its
    Observation ``o``: the proxy's own operations, and the upstreams' it does not carry out."""
    return {
        "purge": Req("POST", f"Patient/{p}/$purge"),
        "purge-get": Req("GET", f"Patient/{p}/$purge"),
        "erase": Req("POST", f"Observation/{o}/$erase"),
        "erase-version": Req("POST", f"Observation/{o}/_history/1/$erase"),
        "expunge-system": Req("POST", "$expunge", body=EXPUNGE),
        "expunge-type": Req("POST", "Observation/$expunge", body=EXPUNGE),
        "expunge-instance": Req("POST", f"Patient/{p}/$expunge", body=EXPUNGE),
        "expunge-version": Req("POST", f"Observation/{o}/_history/1/$expunge", body=EXPUNGE),
        "expunge-everything": Req("POST", f"Patient/{p}/$expunge", "everything=true"),
        "delete-expunge": Req("POST", "$delete-expunge", body=params(url=f"Observation?subject=Patient/{p}")),
        "cascade": Req("DELETE", f"Patient/{p}", "_cascade=delete"),
        "cascade-expunge": Req("DELETE", f"Patient/{p}", "_cascade=delete&_expunge=true"),
        "cascade-header": Req("DELETE", f"Patient/{p}", headers=(("X-Cascade", "delete"),)),
        "conditional-expunge": Req("DELETE", "Observation", f"subject=Patient/{p}&_expunge=true"),
        "conditional-cascade": Req("DELETE", "Patient", f"_id={p}&_cascade=delete"),
        "purge-history": Req("DELETE", f"Patient/{p}/$purge-history"),
        "bulk-delete": Req("DELETE", "Patient/$bulk-delete"),
        "patient-purge": Req("POST", f"Patient/{p}/$patient-purge"),
        "bulk-purge": Req("POST", "$bulk-purge"),
        "vendor-expunge": Req("POST", f"Patient/{p}/$hapi.fhir.expunge", body=EXPUNGE),
    }


def _segments(req: Req) -> list[str]:
    return req.path.split("/")


def _op_index(req: Req) -> int | None:
    return next((i for i, s in enumerate(_segments(req)) if s.startswith("$")), None)


def _with_op(req: Req, spell: Any) -> Req | None:
    index = _op_index(req)
    if index is None:
        return None
    segments = _segments(req)
    segments[index] = spell(segments[index])
    return replace(req, path="/".join(segments))


def _with_flags(req: Req, spell: Any) -> Req | None:
    pairs = [pair.split("=", 1) for pair in req.query.split("&") if pair]
    if not any(name in ("_cascade", "_expunge") for name, _ in pairs):
        return None
    query = "&".join(f"{spell(n) if n in ('_cascade', '_expunge') else n}={v}" for n, v in pairs)
    return replace(req, query=query)


def _insert_history(req: Req) -> Req | None:
    segments = _segments(req)
    if len(segments) < 2 or "_history" in segments:
        return None
    index = _op_index(req)
    at = index if index is not None else len(segments)
    return replace(req, path="/".join(segments[:at] + ["_history", "1"] + segments[at:]))


def _percent_all(name: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in name)


def spellings() -> dict[str, Any]:
    """How a request can be spelled so that some server still reads the same operation."""
    return {
        "exact": lambda r: r,
        "upper-case": lambda r: _with_op(r, str.upper),
        "title-case": lambda r: _with_op(r, lambda s: "$" + s[1:].capitalize()),
        "pct-dollar": lambda r: _with_op(r, lambda s: s.replace("$", "%24")),
        "pct-lower": lambda r: _with_op(r, lambda s: s.replace("$", "%24").replace("e", "%65")),
        "double-encoded": lambda r: _with_op(r, lambda s: s.replace("$", "%2524")),
        "all-encoded": lambda r: _with_op(r, _percent_all),
        "trailing-slash": lambda r: replace(r, path=r.path + "/"),
        "extra-segment": lambda r: replace(r, path=r.path + "/x"),
        "empty-segment": lambda r: replace(r, path=r.path.replace("/", "//", 1)) if "/" in r.path else None,
        "leading-empty": lambda r: replace(r, path="//" + r.path),
        "dot-segment": lambda r: replace(r, path="./" + r.path),
        "matrix-op": lambda r: _with_op(r, lambda s: s + ";v=1"),
        "matrix-type": lambda r: replace(r, path=r.path.replace("/", ";v=1/", 1)) if "/" in r.path else None,
        "history": _insert_history,
        "history-trailing": lambda r: (h := _insert_history(r)) and replace(h, path=h.path + "/"),
        "encoded-type": lambda r: replace(r, path=r.path.replace("t", "%74", 1)) if r.path[0] != "$" else None,
        "format-query": lambda r: replace(r, query=(r.query + "&" if r.query else "") + "_format=json"),
        "flag-upper": lambda r: _with_flags(r, str.upper),
        "flag-encoded": lambda r: _with_flags(r, lambda n: n.replace("_", "%5F")),
        "flag-double-encoded": lambda r: _with_flags(r, lambda n: n.replace("_", "%255F")),
        "flag-modifier": lambda r: _with_flags(r, lambda n: n + ":exact"),
        "flag-value-upper": lambda r: replace(r, query=r.query.replace("=delete", "=DELETE").replace("=true", "=TRUE"))
        if r.query else None,
        "expunge-twice": lambda r: replace(r, query=r.query.replace("_expunge=true", "_expunge=false&_expunge=true"))
        if "_expunge=true" in r.query else None,
        "header-lower": lambda r: replace(r, headers=tuple((k.lower(), v.upper()) for k, v in r.headers))
        if r.headers else None,
        "method-get": lambda r: replace(r, method="GET") if _op_index(r) is not None else None,
        "method-put": lambda r: replace(r, method="PUT") if _op_index(r) is not None else None,
        "method-delete": lambda r: replace(r, method="DELETE") if _op_index(r) is not None else None,
        "override-header": lambda r: replace(r, method="POST", headers=r.headers + (("X-HTTP-Method-Override", r.method),)),
        "override-query": lambda r: replace(r, method="POST", query=(r.query + "&" if r.query else "") + f"_method={r.method}"),
    }


def table(p: str, o: str) -> dict[str, Req]:
    """Every operation × every spelling that changes it, plus each operation (and its case and
    trailing-slash spellings) as an entry of a batch and of a transaction posted to the base."""
    rows: dict[str, Req] = {}
    seen: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for op, canonical in operations(p, o).items():
        for how, spell in spellings().items():
            req = spell(canonical)
            if req is not None and (req.method, req.target, req.headers) not in seen:
                seen.add((req.method, req.target, req.headers))
                rows[f"{op}:{how}"] = req
    for op, canonical in operations(p, o).items():
        if canonical.headers:
            continue  # a Bundle entry has no headers
        for how in ("exact", "upper-case", "trailing-slash", "flag-upper"):
            entry = spellings()[how](canonical)
            if entry is None:
                continue
            for kind in ("batch", "transaction"):
                for base in ("", "/"):
                    rows[f"{op}:{how}:{kind}-entry{base}"] = bundle_request(kind, [entry], base)
        rows[f"{op}:nested-transaction"] = bundle_request(
            "batch", [Req("POST", "", body=bundle_request("transaction", [canonical]).body)])
    return rows


def bundle_request(kind: str, entries: list[Req], base: str = "") -> Req:
    def entry(req: Req) -> dict[str, Any]:
        url = req.path + (f"?{req.query}" if req.query else "")
        return {**({"resource": req.body} if req.body else {}), "request": {"method": req.method, "url": url}}

    harmless = Req("GET", "Patient", "_count=1")
    return Req("POST", base, body={"resourceType": "Bundle", "type": kind,
                                   "entry": [entry(harmless)] + [entry(r) for r in entries]})


def ordinary(p: str, o: str) -> dict[str, Req]:
    """Requests that must reach the upstream exactly as sent (the upstream authorizes them)."""
    return {
        "read": Req("GET", f"Patient/{p}"),
        "search": Req("GET", "Observation", f"subject=Patient/{p}&_count=5"),
        "history": Req("GET", f"Patient/{p}/_history"),
        "everything": Req("GET", f"Patient/{p}/$everything"),
        "plain-delete": Req("DELETE", f"Observation/{o}-none"),
        "conditional-delete": Req("DELETE", "Observation", "code=none-such"),
        "expunge-false": Req("DELETE", "Observation", "code=none-such&_expunge=false"),
        "transaction": bundle_request("transaction", [Req("GET", f"Patient/{p}")]),
        "batch-slash": bundle_request("batch", [Req("DELETE", f"Observation/{o}-none")], "/"),
    }


# ---- the rule on its own ----------------------------------------------------------------

def test_the_rule_never_calls_a_destructive_request_ordinary() -> None:
    rows = table("p1", "o1")
    assert len(rows) > 400
    for name, req in rows.items():
        verdict = classify(req.method, req.target.split("?")[0], req.query, CIMultiDict(req.headers))
        if isinstance(verdict, Inspect):
            verdict = classify_body(json.dumps(req.body).encode())
        assert not isinstance(verdict, (Ordinary, Inspect)), name
    for name, req in ordinary("p1", "o1").items():
        verdict = classify(req.method, req.target.split("?")[0], req.query, CIMultiDict(req.headers))
        if isinstance(verdict, Inspect):
            verdict = classify_body(json.dumps(req.body).encode())
        assert isinstance(verdict, Ordinary), name


def test_canonical_spellings_are_the_proxys_operations() -> None:
    for name, req in operations("p1", "o1").items():
        verdict = classify(req.method, "/" + req.path, req.query, CIMultiDict(req.headers))
        # $bulk-purge only at Patient/$bulk-purge (the row posts it to the base)
        proxy_runs_it = not name.startswith(("purge-history", "bulk-purge", "patient-purge", "vendor-"))
        assert isinstance(verdict, Operation if proxy_runs_it else Refused), (name, verdict)


def test_xml_or_unparseable_bodies_posted_to_the_base_are_refused() -> None:
    assert isinstance(classify_body(b"<Bundle xmlns='http://hl7.org/fhir'/>"), Refused)
    assert isinstance(classify_body(b'{"resourceType": "Bundle", "type": "batch", "type": "transaction"}'), Refused)
    assert isinstance(classify_body(b"\xff\xfe{"), Refused)
    assert isinstance(classify_body(b""), Ordinary)


# ---- through the proxy, in front of a spy -------------------------------------------------

@dataclass
class Spy:
    url: str
    seen: list[tuple[str, str, bytes]]


SEEN = web.AppKey("seen", list)


async def _spy_handler(request: web.Request) -> web.Response:
    request.app[SEEN].append((request.method, request.raw_path, await request.read()))
    return web.json_response({"resourceType": "OperationOutcome", "issue": []}, content_type=FHIR)


@pytest.fixture
async def spy() -> AsyncIterator[Spy]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_route("*", "/{tail:.*}", _spy_handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Spy(str(server.make_url("")).rstrip("/"), app[SEEN])
    await server.close()


async def send(http: httpx.AsyncClient, proxy: str, req: Req, token: str | None = None) -> httpx.Response:
    headers = dict(req.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    content = None
    if req.body is not None:
        content = json.dumps(req.body).encode()
        headers["Content-Type"] = FHIR
    return await http.request(req.method, _raw_url(proxy, req.target), headers=headers, content=content)


def _raw_url(proxy: str, target: str) -> httpx.URL:
    """httpx would normalise the path (dot segments, escapes): send the raw target as it is."""
    base = httpx.URL(proxy)
    path, _, query = target.partition("?")
    return base.copy_with(raw_path=(base.raw_path.decode() + path + (f"?{query}" if query else "")).encode())


def _is_proxys_outcome(answer: httpx.Response) -> bool:
    try:
        return answer.json().get("resourceType") == "OperationOutcome" and answer.json().get("issue") != []
    except ValueError:
        return False


async def run_table(proxy: str, rows: dict[str, Req], spy: Spy | None) -> list[str]:
    """The rows that got anything but a 4xx OperationOutcome of the proxy, or reached the spy."""
    failures = []
    async with httpx.AsyncClient(timeout=30) as http:
        for name, req in rows.items():
            before = len(spy.seen) if spy else 0
            answer = await send(http, proxy, req)
            arrived = spy.seen[before:] if spy else []
            if not (400 <= answer.status_code < 500 and _is_proxys_outcome(answer)) or arrived:
                failures.append(f"{name}: {req.method} {req.target} -> {answer.status_code} {arrived[:1]}")
    return failures


async def test_no_spelling_of_a_destructive_request_reaches_the_upstream(make_proxy, spy) -> None:
    proxy = await make_proxy(f"{spy.url}/fhir", auth={"admin_token": TOKEN})
    rows = table("p1", "o1")
    failures = await run_table(proxy, rows, spy)
    assert failures == [], f"{len(failures)} of {len(rows)} rows: " + "\n".join(failures[:40])
    assert spy.seen == []


async def test_ordinary_requests_reach_the_upstream_exactly_as_sent(make_proxy, spy) -> None:
    proxy = await make_proxy(f"{spy.url}/fhir")
    async with httpx.AsyncClient(timeout=30) as http:
        for name, req in ordinary("p1", "o1").items():
            before = len(spy.seen)
            answer = await send(http, proxy, req)
            assert answer.status_code == 200, (name, answer.text)
            method, path, body = spy.seen[before]
            assert (method, path) == (req.method, "/fhir" + req.target), name
            assert body == (json.dumps(req.body).encode() if req.body else b""), name


async def test_a_large_body_posted_to_the_base_is_refused_unread(make_proxy, spy) -> None:
    proxy = await make_proxy(f"{spy.url}/fhir", passthrough={"inspect_max_bytes": 2048})
    big = bundle_request("transaction", [Req("GET", "Patient/" + "x" * 60)] * 40)
    async with httpx.AsyncClient() as http:
        answer = await send(http, proxy, big)
    assert answer.status_code == 413 and spy.seen == []


# ---- the base path -----------------------------------------------------------------------

@pytest.mark.parametrize("upstream_path", ["/fhir", ""])
async def test_an_encoded_base_path_is_refused_and_the_plain_one_forwarded(make_proxy, spy, upstream_path) -> None:
    """``/fhi%72/...`` routes like ``/fhir/...`` but must not be cut as if it were."""
    proxy = await make_proxy(spy.url + upstream_path)
    origin = proxy.removesuffix("/fhir")
    async with httpx.AsyncClient() as http:
        for target in ("/fhi%72/Patient/x", "/%66hir/Patient/x", "/fhi%72/Patient/x/$expunge"):
            answer = await http.post(httpx.URL(origin).copy_with(raw_path=target.encode())) \
                if target.endswith("$expunge") else await http.get(httpx.URL(origin).copy_with(raw_path=target.encode()))
            assert 400 <= answer.status_code < 500, (target, answer.text)
            assert answer.json()["resourceType"] == "OperationOutcome"
        assert spy.seen == []
        answer = await http.get(f"{proxy}/Patient/x?name=a")
    assert answer.status_code == 200
    assert [(m, p) for m, p, _ in spy.seen] == [("GET", f"{upstream_path}/Patient/x?name=a")]


# ---- escalation and protected targets ------------------------------------------------------

EXPUNGE_ONLY = "token-allowed-expunge-only"
EXPUNGE_AND_PURGE = "token-allowed-expunge-and-purge"
TOKENS = {"tokens": [{"name": "expunger", "token": {"env": "ROUTING_EXPUNGE_ONLY"}, "operations": ["$expunge"]},
                     {"name": "purger", "token": {"env": "ROUTING_EXPUNGE_PURGE"}, "operations": ["$expunge", "$purge"]}]}


@pytest.fixture
def token_env(monkeypatch) -> None:
    monkeypatch.setenv("ROUTING_EXPUNGE_ONLY", EXPUNGE_ONLY)
    monkeypatch.setenv("ROUTING_EXPUNGE_PURGE", EXPUNGE_AND_PURGE)


async def test_expunge_everything_is_authorized_as_the_purge_it_becomes(make_proxy, medplum_base, token_env) -> None:
    proxy = await make_proxy(medplum_base, auth=TOKENS)
    everything = Req("POST", "Patient/nobody-here/$expunge", "everything=true&dryRun=true")
    async with httpx.AsyncClient(timeout=60) as http:
        refused = await send(http, proxy, everything, EXPUNGE_ONLY)
        assert refused.status_code == 403, refused.text
        assert "$purge" in refused.json()["issue"][0]["diagnostics"]
        accepted = await send(http, proxy, everything, EXPUNGE_AND_PURGE)
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.headers["Content-Location"]
        status = await http.get(status_url, headers={"Authorization": f"Bearer {EXPUNGE_AND_PURGE}"})
        assert status.status_code in (200, 202), status.text
        other = await http.get(status_url, headers={"Authorization": f"Bearer {EXPUNGE_ONLY}"})
        assert other.status_code == 403


async def test_a_cascade_with_expunge_is_authorized_as_an_expunge_too(make_proxy, scripted, monkeypatch) -> None:
    from tests.fake_upstream import BASE, writes

    monkeypatch.setenv("ROUTING_CASCADE_ONLY", "token-allowed-cascade-only")
    proxy = await make_proxy(BASE, auth={"tokens": [{"name": "cascader", "token": {"env": "ROUTING_CASCADE_ONLY"},
                                                     "operations": ["cascade-delete"]}]})
    async with httpx.AsyncClient() as http:
        plain = await send(http, proxy, Req("DELETE", "Patient/p1", "_cascade=delete&_dryRun=true"),
                           "token-allowed-cascade-only")
        hard = await send(http, proxy, Req("DELETE", "Patient/p1", "_cascade=delete&_expunge=true&_dryRun=true"),
                          "token-allowed-cascade-only")
    assert plain.status_code == 200, plain.text
    assert hard.status_code == 403 and "$expunge" in hard.json()["issue"][0]["diagnostics"], hard.text
    assert writes(scripted) == []


PROTECTED = [
    Req("DELETE", "AuditEvent/a1", "_cascade=delete&_expunge=true"),
    Req("DELETE", "AuditEvent/a1", "_cascade=delete"),
    Req("DELETE", "Provenance/v1", "_cascade=delete"),
    Req("DELETE", "Provenance", "target=Patient/p1&_expunge=true"),
    Req("POST", "Provenance/v1/$erase"),
    Req("POST", "Provenance/v1/$expunge"),
    Req("POST", "AuditEvent/a1/_history/1/$expunge"),
    Req("POST", "AuditEvent/$expunge", body=EXPUNGE),
    Req("POST", "$delete-expunge", body=params(url="Provenance?target=Patient/p1")),
]


@pytest.fixture
def scripted() -> Iterator[Any]:
    from tests.fake_upstream import scripted_upstream

    yield from scripted_upstream()


async def test_excluded_and_audit_types_are_never_targets(make_proxy, scripted) -> None:
    from tests.fake_upstream import BASE, writes

    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient() as http:
        for req in PROTECTED:
            answer = await send(http, proxy, req, TOKEN)
            assert answer.status_code == 422, (req, answer.text)
            assert answer.json()["issue"][0]["code"] == "business-rule"
    assert writes(scripted) == []


# ---- real HAPI -----------------------------------------------------------------------------

@pytest.mark.hapi
async def test_hapi_control_patient_survives_the_whole_table_without_a_token(make_proxy, hapi_base) -> None:
    seed = seeds.build(sizes={"Observation": 2, "Encounter": 1}, shared=False)
    seeds.write(hapi_base, seed.resources)
    control = [k for k in seed.untouchable if k[0] in ("Patient", "Observation", "Encounter")]
    observation = next(rid for rtype, rid in control if rtype == "Observation")
    second = [r for r in seed.resources if (r["resourceType"], r["id"]) in
              {("Patient", seed.control), ("Observation", observation)}]
    seeds.write(hapi_base, [{**r, "meta": {"tag": [{"code": "v2"}]}} for r in second])  # a history to lose
    audit = {"resourceType": "AuditEvent", "id": f"{seed.control}-ae", "recorded": "2024-01-01T00:00:00Z",
             "type": {"code": "rest"}, "agent": [{"requestor": True}], "source": {"observer": {"display": "t"}}}
    seeds.write(hapi_base, [audit])
    keys = control + [("AuditEvent", audit["id"])]
    before = seeds.snapshot(hapi_base, keys)
    assert all(before[(r["resourceType"], r["id"])][1].count(b"resourceType") >= 2 for r in second)

    proxy = await make_proxy(hapi_base, auth={"admin_token": TOKEN})
    rows = table(seed.control, observation)
    failures = await run_table(proxy, rows, None)
    async with httpx.AsyncClient(timeout=60) as http:  # with a token: the protected AuditEvent
        answer = await send(http, proxy, Req("DELETE", f"AuditEvent/{audit['id']}", "_cascade=delete&_expunge=true"), TOKEN)
    assert seeds.snapshot(hapi_base, keys) == before  # byte-identical, _history included
    assert failures == [], "\n".join(failures[:40])
    assert answer.status_code == 422, answer.text

