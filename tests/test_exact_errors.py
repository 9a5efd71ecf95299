"""Honest numbers and errors: counts are measured, refusals tell how to proceed, failures are
502/504/400 OperationOutcomes and never 500.

Upstream deaths are real: a forwarding server in front of the real Medplum engine that stops
answering (drops every connection) after a given number of delete transactions. Faults that need
a precise wrong answer (a Patient read failing, paging that leaves the upstream) are scripted
with respx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from aiohttp import web
from aiohttp.test_utils import TestServer

from purgeproxy.app_keys import CONFIG, FHIR_CLIENT, HARD_DELETE_LIMIT, PROFILE, UPSTREAM_LIMIT
from purgeproxy.engine.deletion import Deleter
from purgeproxy.fhir.client import FhirClient, make_http_client
from purgeproxy.jobs.store import Job
from purgeproxy.operations import purge_job
from purgeproxy.servers.profile import ProfileCache
from purgeproxy.servers.registry import kind_named
from tests import seed as seeds
from tests.fake_upstream import BASE, CAPABILITY, bundle, observation, writes
from tests.helpers import AUTH, TOKEN, config_for, texts, until_done

OUTCOME = {"resourceType": "OperationOutcome", "issue": []}
NESTED = b"[" * 100_000  # 100 kB: well under purge.max_body_bytes, far deeper than json parses


# --- an upstream that dies mid-purge ------------------------------------------------------------

class DyingUpstream:
    """Forwards everything to ``target`` until ``transactions`` delete transactions went through;
    from the next one on it drops every connection without an answer, as a crashed server does."""

    def __init__(self, target: str, transactions: int) -> None:
        self.target, self.allowed = target.rstrip("/"), transactions
        self.forwarded = 0
        self.dead = False
        self.http = httpx.AsyncClient(timeout=60)

    def _is_delete_transaction(self, method: str, body: bytes) -> bool:
        if method != "POST" or not body:
            return False
        try:
            document = json.loads(body)
        except ValueError:
            return False
        return isinstance(document, dict) and document.get("type") == "transaction"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._is_delete_transaction(request.method, body):
            self.dead = self.dead or self.forwarded >= self.allowed
            self.forwarded += 0 if self.dead else 1
        if self.dead:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        tail = request.match_info.get("tail", "")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "content-type", "prefer")}
        answer = await self.http.request(request.method, f"{self.target}/{tail}".rstrip("/"), params=list(request.query.items()),
                                         content=body or None, headers=headers)
        return web.Response(status=answer.status_code, body=answer.content,
                            headers={"Content-Type": answer.headers.get("Content-Type", "application/fhir+json")})


@pytest.fixture
async def dying() -> AsyncIterator[Any]:
    started: list[tuple[TestServer, DyingUpstream]] = []

    async def start(target: str, transactions: int) -> str:
        upstream = DyingUpstream(target, transactions)
        app = web.Application()
        app.router.add_route("*", "/fhir", upstream.handle)
        app.router.add_route("*", "/fhir/{tail:.*}", upstream.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append((server, upstream))
        return str(server.make_url("/fhir"))

    yield start
    for server, upstream in started:
        await server.close()
        await upstream.http.aclose()


async def test_an_upstream_dying_mid_purge_gives_measured_counts(make_proxy, medplum_base, dying) -> None:
    seed = seeds.build(sizes={"Observation": 30}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.untouchable)
    proxy = await make_proxy(await dying(medplum_base, 2), auth={"admin_token": TOKEN}, purge={"batch_size": 5})
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge", headers=AUTH)
    outcome = answer.json()
    left = seeds.present(medplum_base, seed.in_scope)
    assert len(left) == len(seed.in_scope) - 10  # two transactions of five went through
    assert answer.status_code == 502, answer.text
    verdict = outcome["issue"][0]
    assert (verdict["severity"], verdict["code"]) == ("error", "incomplete"), texts(outcome)
    assert "at least 10 resource(s) removed" in verdict["diagnostics"]
    assert "could not be verified" in verdict["diagnostics"]
    assert "0 in scope remain" not in texts(outcome)
    assert "history was not read back" in texts(outcome)  # not "serves no history for 0 of them"
    assert seeds.snapshot(medplum_base, seed.untouchable) == before


async def test_an_upstream_dying_mid_delete_expunge_gives_measured_counts(make_proxy, medplum_base, dying) -> None:
    tag = seeds.new_tag()
    resources = [{"resourceType": "Patient", "id": f"{tag}-p"}]
    resources += [observation(f"{tag}-o{i}", f"Patient/{tag}-p") for i in range(12)]
    seeds.write(medplum_base, resources)
    proxy = await make_proxy(await dying(medplum_base, 1), auth={"admin_token": TOKEN}, purge={"batch_size": 5})
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.delete(f"{proxy}/Observation?subject=Patient/{tag}-p&_expunge=true", headers=AUTH)
    outcome = answer.json()
    observations = [("Observation", f"{tag}-o{i}") for i in range(12)]
    assert len(seeds.present(medplum_base, observations)) == 7
    assert answer.status_code == 502, answer.text
    assert outcome["issue"][0]["code"] == "incomplete", texts(outcome)
    assert "at least 5 resource(s) removed" in outcome["issue"][0]["diagnostics"]
    assert "could not be verified" in texts(outcome)
    assert "history was not read back" in texts(outcome) and "serves no history" not in texts(outcome)


# --- failures while resolving: 502/504, never 500 -----------------------------------------------

@pytest.fixture
def faulty() -> Iterator[respx.MockRouter]:
    """Just enough upstream for a purge of p1; tests script the Patient read and the search."""
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        router.get(f"{BASE}/metadata").respond(200, json=CAPABILITY)
        router.post(BASE).respond(400, json=OUTCOME)  # no batch: searches are sent one by one
        router.get(url__regex=rf"{BASE}/(Patient/p1/)?_history.*").respond(404, json=OUTCOME)  # no history
        yield router


def _empty_searches(router: respx.MockRouter) -> None:
    router.get(url__regex=rf"{BASE}/[A-Za-z]+\?.*").respond(200, json=bundle())


@pytest.mark.parametrize(("fault", "status", "code"), [
    (httpx.Response(500, json=OUTCOME), 502, "exception"),
    (httpx.Response(403, text="not json"), 502, "transient"),
    (httpx.ReadTimeout("slow"), 504, "timeout"),
    (httpx.Response(200, content=NESTED, headers={"Content-Type": "application/fhir+json"}), 502, "transient"),
], ids=["500", "not-json", "timeout", "nested-json"])
async def test_a_failed_patient_read_is_a_gateway_error(make_proxy, faulty, fault, status, code) -> None:
    route = faulty.get(f"{BASE}/Patient/p1")
    if isinstance(fault, Exception):
        route.side_effect = fault
    else:
        route.return_value = fault
    _empty_searches(faulty)
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", headers=AUTH)
    assert answer.status_code == status, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["code"] == code
    assert writes(faulty) == []


async def test_paging_that_leaves_the_upstream_is_a_gateway_error(make_proxy, faulty) -> None:
    faulty.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    page = {**bundle(observation("o1", "Patient/p1")),
            "link": [{"relation": "next", "url": "http://elsewhere.test/fhir/Observation?page=2"}]}
    faulty.get(url__regex=rf"{BASE}/Observation\?.*subject=Patient%2Fp1").respond(200, json=page)
    _empty_searches(faulty)
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        purge = await http.post(f"{proxy}/Patient/p1/$purge", headers=AUTH)
        expunge = await http.post(f"{proxy}/$delete-expunge", headers=AUTH, json={
            "resourceType": "Parameters", "parameter": [{"name": "url", "valueString": "Observation?subject=Patient/p1"}]})
    for answer in (purge, expunge):
        assert answer.status_code == 502, answer.text
        assert "outside its own base" in answer.json()["issue"][0]["diagnostics"]
    assert writes(faulty) == []


# --- bodies that nest too deeply ------------------------------------------------------------------

BODY_PARSERS = ["Patient/p1/$purge", "Observation/o1/$erase", "Observation/o1/_history/1/$erase",
                "Observation/o1/$expunge", "Observation/o1/_history/1/$expunge", "Observation/$expunge",
                "$expunge", "$delete-expunge"]


@pytest.mark.parametrize("path", BODY_PARSERS)
async def test_deeply_nested_json_is_a_400(make_proxy, faulty, path) -> None:
    faulty.get(url__regex=rf"{BASE}/.*").respond(200, json=bundle())
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/{path}", content=NESTED,
                                 headers={**AUTH, "Content-Type": "application/fhir+json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["issue"][0]["code"] == "structure"
    assert writes(faulty) == []


# --- refusals name the parameter spelling of the form that was used -------------------------------

async def test_refusals_name_the_confirmation_parameter_of_each_form(make_proxy, medplum_base) -> None:
    tag = seeds.new_tag()
    observations = [observation(f"{tag}-o{i}", f"Patient/{tag}-p") for i in range(3)]
    seeds.write(medplum_base, [{"resourceType": "Patient", "id": f"{tag}-p"}, *observations])
    keys = [("Observation", o["id"]) for o in observations]
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 2})
    query = f"Observation?subject=Patient/{tag}-p"
    async with httpx.AsyncClient(timeout=120) as http:
        conditional = await http.delete(f"{proxy}/{query}&_expunge=true", headers=AUTH)
        cascade = await http.delete(f"{proxy}/Patient/{tag}-p?_cascade=delete", headers=AUTH)
        posted = await http.post(f"{proxy}/$delete-expunge", headers=AUTH, json={
            "resourceType": "Parameters", "parameter": [{"name": "url", "valueString": query}]})
        purge = await http.post(f"{proxy}/Patient/{tag}-p/$purge", headers=AUTH)
        misspelt = await http.delete(f"{proxy}/{query}&_expunge=true&confirm=true", headers=AUTH)
        for answer, spelling in [(conditional, "_confirm"), (cascade, "_confirm"), (posted, "confirm"), (purge, "confirm")]:
            issue = answer.json()["issue"][0]
            assert answer.status_code == 422 and issue["code"] == "business-rule", answer.text
            assert f"repeat with {spelling}=true" in issue["diagnostics"] and issue["expression"] == [spelling]
        assert "_dryRun=true" in conditional.json()["issue"][0]["diagnostics"]
        assert misspelt.status_code == 400 and "use _confirm=true" in misspelt.json()["issue"][0]["diagnostics"]
        assert seeds.present(medplum_base, keys) == keys  # nothing was deleted by any of them
        followed = await http.delete(f"{proxy}/{query}&_expunge=true&_confirm=true", headers=AUTH)
    assert followed.status_code == 200 and followed.json()["issue"][0]["code"] == "success", followed.text
    assert "Observation: 3 deleted" in texts(followed.json())
    assert seeds.present(medplum_base, keys) == []


# --- asynchronous purges: the rail before 202, the reason stored, cumulative counts ---------------

def _kodjin(answer: httpx.Response) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in answer.json()["parameter"]}


async def test_an_async_purge_over_the_limit_is_refused_before_202(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 2},
                             jobs={"poll_seconds": 0.2})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge",
                                 headers={**AUTH, "Prefer": "respond-async"})
        assert answer.status_code == 422 and "Content-Location" not in answer.headers, answer.text
        assert "would delete 4 resources, more than 2" in answer.json()["issue"][0]["diagnostics"]
        assert "repeat with confirm=true" in answer.json()["issue"][0]["diagnostics"]
        assert seeds.present(medplum_base, seed.in_scope) == seed.in_scope
        small = await http.post(f"{proxy}/Patient/{seed.control}-nobody/$purge",
                                headers={**AUTH, "Prefer": "respond-async"})
        assert small.status_code == 202, small.text  # under the limit: accepted as before


async def test_a_failed_job_shows_why_in_its_kodjin_status(make_proxy, medplum_base) -> None:
    """Medplum's ``$expunge?everything=true`` has no confirm parameter: over the limit, its job
    fails on its own plan, and both status URLs say why."""
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"max_without_confirm": 2},
                             jobs={"poll_seconds": 0.2})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    async with httpx.AsyncClient(timeout=120) as http:
        kicked = await http.post(f"{proxy}/Patient/{seed.patient}/$expunge?everything=true", headers=AUTH)
        assert kicked.status_code == 202, kicked.text
        done = await until_done(http, kicked.headers["Content-Location"], timeout=60, pause=0.05)
        response = done.json()["entry"][0]["response"]
        kodjin = _kodjin(await http.get(f"{proxy}/patient-purge/{kicked.headers['Content-Location'].rsplit('/', 1)[1]}",
                                         headers=AUTH))
    assert response["status"] == "422 Unprocessable Entity"
    assert kodjin["status"] == "error"
    assert "would delete 4 resources, more than 2" in kodjin["statusReason"]
    assert seeds.present(medplum_base, seed.in_scope) == seed.in_scope


class _Resumed:
    """The progress callback of a job's second attempt: the first removed ``earlier``."""

    def __init__(self, earlier: int) -> None:
        self.earlier, self.calls = earlier, 0

    async def __call__(self, done: int, total: int) -> None:
        self.calls += 1


async def test_a_resumed_job_reports_the_count_of_every_attempt(medplum_base) -> None:
    seed = seeds.build(sizes={"Observation": 6}, shared=False)
    seeds.write(medplum_base, seed.resources)
    http = make_http_client(connect=5, read=60, max_connections=8)
    client = FhirClient(medplum_base, http)
    app = web.Application()
    app[CONFIG] = config_for(medplum_base)
    app[FHIR_CLIENT] = client
    app[PROFILE] = ProfileCache(client, "auto", "auto")
    app[UPSTREAM_LIMIT] = asyncio.Semaphore(4)
    app[HARD_DELETE_LIMIT] = asyncio.Semaphore(16)
    request = {"patient_id": seed.patient, "dry_run": False, "confirmed": True,
               "compartment": {k: list(v) for k, v in (await app[PROFILE].get()).definitions.patient_compartment.items()}}
    job = Job("j1", "$purge", "t", {"request": request, "caller": "test"}, "processing", 50, 40, None, "w", 2,
              datetime.now(UTC))
    try:
        outcome = await purge_job.run(app, job, _Resumed(40))  # type: ignore[arg-type]
    finally:
        await http.aclose()
    verdict = outcome.outcome["issue"][0]["diagnostics"]
    assert outcome.status == "completed", texts(outcome.outcome)
    assert f"(at least {40 + len(seed.in_scope)} deleted)" in verdict  # 40 is what they recorded
    assert "At least 40 resource(s) were removed by earlier attempts" in texts(outcome.outcome)


# --- a blocker is never called "out of scope" when it is in the compartment -----------------------

def _conflict(blocked: str, blocker: str) -> httpx.Response:
    return httpx.Response(409, json={"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "processing",
        "diagnostics": f"Unable to delete {blocked} because at least one resource has a reference to this "
                       f"resource. First reference found was resource {blocker} in path Observation.subject"}]})


VERSION_1 = {("Observation", "bad"): "1", ("Patient", "p1"): "1"}


def _readable(router: respx.Router, *refs: str) -> None:
    """Each resource reads back in version 1, the version the deleter was told it examined."""
    for ref in refs:
        rtype, rid = ref.split("/")
        router.get(f"{BASE}/{ref}").respond(200, json={"resourceType": rtype, "id": rid, "meta": {"versionId": "1"}})


async def test_a_blocker_that_failed_itself_is_not_labelled_out_of_scope(client) -> None:
    """HAPI-shaped 409s: Observation/bad cannot be deleted (500), and it blocks Patient/p1."""
    with respx.mock(assert_all_called=False) as router:
        def transaction(request: httpx.Request) -> httpx.Response:
            urls = [e["request"]["url"] for e in json.loads(request.content)["entry"]]
            if "Observation/bad" in urls:
                return httpx.Response(500, json=OUTCOME)
            return _conflict("Patient/p1", "Observation/bad" if "Patient/p1" in urls else "Task/t1")

        router.post(BASE).mock(side_effect=transaction)
        _readable(router, "Observation/bad", "Patient/p1")
        router.delete(f"{BASE}/Observation/bad").respond(500, json=OUTCOME)
        deleter = Deleter(client, kind_named("hapi"), 1, asyncio.Semaphore(2), hard_delete=False)
        report = await deleter.delete([("Observation", "bad"), ("Patient", "p1")], versions=VERSION_1)
    assert ("Observation", "bad") in report.failed
    assert report.blocked[("Patient", "p1")] == "still referenced by Observation/bad (itself not deleted)"
    with respx.mock(assert_all_called=False) as router:
        router.post(BASE).mock(return_value=_conflict("Patient/p1", "Task/t1"))
        _readable(router, "Patient/p1")
        deleter = Deleter(client, kind_named("hapi"), 10, asyncio.Semaphore(2), hard_delete=False)
        other = await deleter.delete([("Patient", "p1")], versions=VERSION_1)
    assert "out of scope" not in other.blocked[("Patient", "p1")]
    assert other.blocked[("Patient", "p1")].startswith("still referenced by Task/t1 (not planned for deletion")


# --- the one conversion point -----------------------------------------------------------------------

async def test_an_unexpected_exception_is_a_500_outcome_that_echoes_nothing(aiohttp_client) -> None:
    from purgeproxy.access_log import access_log
    from purgeproxy.errors import outcome_errors
    from purgeproxy.fhir.outcome import OutcomeError

    async def crash(request: web.Request) -> web.Response:
        raise ValueError(f"patient {request.query['name']} broke it")

    async def refuse(request: web.Request) -> web.Response:
        raise OutcomeError(429, "throttled", "slow down", expression="x", headers={"Retry-After": "3"})

    app = web.Application(middlewares=[access_log, outcome_errors])
    app.router.add_get("/crash", crash)
    app.router.add_get("/refuse", refuse)
    http = await aiohttp_client(app)
    crashed = await http.get("/crash", params={"name": "Jane-Doe-1234"})
    body = await crashed.text()
    assert crashed.status == 500 and "Jane-Doe-1234" not in body
    assert json.loads(body)["issue"][0] == {"severity": "error", "code": "exception",
                                            "diagnostics": "internal error in purgeproxy"}
    refused = await http.get("/refuse")
    assert (refused.status, refused.headers["Retry-After"]) == (429, "3")
    assert (await refused.json(content_type=None))["issue"][0] == {
        "severity": "error", "code": "throttled", "diagnostics": "slow down", "expression": ["x"]}
    missing = await http.get("/nowhere")
    assert missing.status == 404 and (await missing.json(content_type=None))["resourceType"] == "OperationOutcome"


# --- without referential integrity, what is left pointing at deleted resources is listed -----------

async def test_other_patients_resources_left_pointing_at_deleted_members_are_listed(make_proxy, medplum_base) -> None:
    """Medplum deletes what others still reference: the control's report on one of the patient's
    Observations survives, dangling, and the outcome names it (not only references to the Patient)."""
    seed = seeds.build(sizes={"Observation": 4}, shared=False)
    report = {"resourceType": "DiagnosticReport", "id": f"{seed.control}-cites", "status": "final",
              "code": {"text": "second opinion"}, "subject": seeds.ref("Patient", seed.control),
              "result": [seeds.ref("Observation", f"{seed.patient}-obs2")]}
    seeds.write(medplum_base, seed.resources + [report])
    before = seeds.snapshot(medplum_base, [*seed.untouchable, ("DiagnosticReport", report["id"])])
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, purge={"outside_references_members": 100})
    default = await make_proxy(medplum_base, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=120) as http:
        planned = (await http.post(f"{default}/Patient/{seed.patient}/$purge?dryRun=true", headers=AUTH)).json()
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge", headers=AUTH)
    assert (f"searched for references to Patient/{seed.patient} only: references to the other "
            f"{len(seed.in_scope) - 1} resource(s) to delete were not searched") in texts(planned)
    outcome = answer.json()
    assert answer.status_code == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert (f"DiagnosticReport/{report['id']} is outside the compartment and still references "
            f"Observation/{seed.patient}-obs2") in texts(outcome)
    assert f"referencing any of the {len(seed.in_scope)} resource(s) to delete were searched" in texts(outcome)
    assert seeds.present(medplum_base, seed.in_scope) == []
    assert seeds.snapshot(medplum_base, [*seed.untouchable, ("DiagnosticReport", report["id"])]) == before
