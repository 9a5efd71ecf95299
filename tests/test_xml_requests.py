"""XML through the proxy: ``Parameters`` bodies in FHIR XML meet the same checks as JSON (and
unsafe XML is refused before anything reaches the upstream), and every answer the proxy makes
itself (outcomes, refusals, 406, async status) comes in the format asked for."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx
from lxml import etree

from purgeproxy.fhir.xml import FHIR_NS, XmlError, from_xml, tables_for
from tests import fhir_schemas
from tests.fake_upstream import BASE, scripted_upstream, upstream_calls, writes
from tests.helpers import until_done

TOKEN = "xml-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
XML = {"Content-Type": "application/fhir+xml"}
R4 = tables_for("4.0.1")


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


def parameters(*inner: str) -> bytes:
    return f'<Parameters xmlns="{FHIR_NS}">{"".join(inner)}</Parameters>'.encode()


def boolean(name: str, value: str = "true", kind: str = "valueBoolean") -> str:
    return f'<parameter><name value="{name}"/><{kind} value="{value}"/></parameter>'


def compartment(code: str, param: str) -> str:
    return ('<parameter><name value="compartmentDefinition"/><resource><CompartmentDefinition>'
            '<url value="http://example.org/cd"/><name value="narrow"/><status value="active"/>'
            f'<code value="Patient"/><search value="true"/><resource><code value="{code}"/>'
            f'<param value="{param}"/></resource></CompartmentDefinition></resource></parameter>')


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
          + b']><Parameters xmlns="http://hl7.org/fhir"><parameter><name value="&lol9;"/></parameter></Parameters>')
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE Parameters SYSTEM "http://upstream.test/fhir/evil.dtd">' + parameters()
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE Parameters [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   b'<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="&x;"/></parameter></Parameters>')
NESTED = parameters("<parameter><name value='a'/>" + "<part><name value='a'/>" * 2000 + "</part>" * 2000 + "</parameter>")

# (id, body, status, issue code, text fragment, the upstream may be read: its FHIR version)
REFUSED = [
    ("malformed", b'<Parameters xmlns="http://hl7.org/fhir"><parameter>', 400, "structure", "not well-formed XML", False),
    ("not-xml", b"{\"resourceType\": \"Parameters\"}", 400, "structure", "not well-formed XML", False),
    ("billion-laughs", LAUGHS, 400, "security", "DTD or entities", False),
    ("external-dtd", EXTERNAL_DTD, 400, "security", "DTD or entities", False),
    ("external-entity", EXTERNAL_ENTITY, 400, "security", "DTD or entities", False),
    ("wrong-root", f'<Patient xmlns="{FHIR_NS}"><active value="true"/></Patient>'.encode(), 422, "invalid",
     "must be a Parameters resource", True),
    ("unknown-root", f'<Bogus xmlns="{FHIR_NS}"/>'.encode(), 400, "structure", "'Bogus' is not a FHIR 4.0.1 resource type", True),
    ("no-namespace", b"<Parameters><parameter><name value='dryRun'/></parameter></Parameters>", 400, "structure",
     "not in the FHIR namespace", True),
    ("unknown-element", parameters("<parameter><name value='dryRun'/><valueBogus value='1'/></parameter>"), 400,
     "structure", "unknown element 'valueBogus'", True),
    ("unknown-attribute", parameters("<parameter kind='x'><name value='dryRun'/></parameter>"), 400, "structure",
     "unknown attribute 'kind'", True),
    ("repeated-singleton", parameters("<parameter><name value='dryRun'/><name value='confirm'/></parameter>"), 400,
     "structure", "may occur once", True),
    ("text-content", parameters("<parameter><name value='dryRun'/>true</parameter>"), 400, "structure",
     "text is not allowed", True),
    ("bad-boolean", parameters(boolean("dryRun", "yes")), 400, "structure", "is not a boolean", True),
    ("too-deep", NESTED, 400, "structure", "nests XML too deeply", True),
    ("unknown-parameter", parameters(boolean("everything")), 400, "not-supported", "unknown parameter 'everything'", True),
    ("wrong-type", parameters(boolean("dryRun", "yes", "valueString")), 400, "invalid", "wrong type", True),
    ("dry-run-conflict", parameters(boolean("dryRun", "false"), boolean("dryRun", "true")), 400, "invalid",
     "different values", True),
    ("compartment-unknown-type", parameters(compartment("Bogus", "subject")), 422, "invalid",
     "'Bogus' is not a FHIR 4.0.1 resource type", True),
    ("compartment-token-param", parameters(compartment("Observation", "code")), 422, "invalid",
     "'code' is not a reference search parameter of Observation", True),
]


@pytest.mark.parametrize(("body", "status", "code", "text", "reads"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
async def test_xml_bodies_are_refused_like_json_ones(make_proxy, upstream, body, status, code, text, reads) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", content=body, headers={**AUTH, **XML})
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/fhir+json")  # no Accept: JSON
    issue = answer.json()["issue"][0]
    assert issue["code"] == code and text in issue["diagnostics"], issue
    assert writes(upstream) == []
    if not reads:  # unsafe or malformed XML costs the upstream nothing at all
        assert upstream_calls(upstream) == []


@pytest.mark.parametrize("path", ["Observation/o1/$erase", "Observation/$expunge", "$delete-expunge"])
async def test_the_vendor_operations_refuse_unsafe_xml_too(make_proxy, upstream, path) -> None:
    """They read the upstream's profile before any body (for JSON too); nothing is written."""
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        for body, code in [(LAUGHS, "security"), (EXTERNAL_DTD, "security"), (b"<Parameters", "structure")]:
            answer = await http.post(f"{proxy}/{path}", content=body, headers={**AUTH, **XML})
            assert answer.status_code == 400 and answer.json()["issue"][0]["code"] == code, answer.text
    assert writes(upstream) == [] and set(upstream_calls(upstream)) <= {f"GET {BASE}/metadata"}


async def test_an_oversized_xml_body_is_refused_unread(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN}, purge={"max_body_bytes": 2048})
    body = parameters(boolean("dryRun"), "<!--" + "x" * 4096 + "-->")
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(f"{proxy}/Patient/p1/$purge", content=body, headers={**AUTH, **XML})
    assert answer.status_code == 413 and answer.json()["issue"][0]["code"] == "too-costly"
    assert upstream_calls(upstream) == []


def _xml_outcome(answer: httpx.Response) -> dict:
    assert answer.headers["Content-Type"].startswith("application/fhir+xml"), answer.headers
    document = from_xml(answer.content, R4)
    assert document["resourceType"] == "OperationOutcome"
    return document


async def test_an_xml_body_runs_the_purge_and_the_answer_is_xml(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        plan = await http.post(f"{proxy}/Patient/p1/$purge", content=parameters(boolean("dryRun")),
                               headers={**AUTH, **XML, "Accept": "application/fhir+xml"})
        narrowed = await http.post(f"{proxy}/Patient/p1/$purge?_format=xml&_pretty=true",
                                   content=parameters(boolean("dryRun"), compartment("Observation", "subject")),
                                   headers={**AUTH, **XML})
    assert plan.status_code == 200, plan.text
    first = _xml_outcome(plan)["issue"][0]
    assert first["code"] == "informational" and "Dry run" in first["diagnostics"]
    assert narrowed.status_code == 200 and b"\n  <issue>" in narrowed.content
    assert "Observation: 2 would be deleted" in [i["diagnostics"] for i in _xml_outcome(narrowed)["issue"]]
    assert writes(upstream) == []  # dry runs


async def test_an_unproducible_format_is_refused_before_any_work(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        by_accept = await http.post(f"{proxy}/Patient/p1/$purge", headers={**AUTH, "Accept": "text/html"})
        by_format = await http.post(f"{proxy}/Patient/p1/$purge?_format=html", headers=AUTH)
        by_summary = await http.post(f"{proxy}/Patient/p1/$purge?_summary=count", headers=AUTH)
    for answer, status in [(by_accept, 406), (by_format, 406), (by_summary, 400)]:
        assert answer.status_code == status, answer.text
        assert answer.headers["Content-Type"].startswith("application/fhir+json")
        assert answer.json()["issue"][0]["code"] in ("not-supported", "invalid")
    assert upstream_calls(upstream) == []  # not even the patient was looked at


async def test_refusals_come_in_the_format_asked_for(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    async with httpx.AsyncClient(timeout=60) as http:
        unauthorized = await http.post(f"{proxy}/Patient/p1/$purge", headers={"Accept": "application/fhir+xml"})
        bad_id = await http.post(f"{proxy}/Patient/p!1/$purge?_format=xml", headers=AUTH)
        not_forwarded = await http.delete(f"{proxy}/Patient/p1/$purge-history", headers={**AUTH, "Accept": "application/xml"})
    assert unauthorized.status_code == 401 and "WWW-Authenticate" in unauthorized.headers
    assert _xml_outcome(unauthorized)["issue"][0]["code"] == "login"
    assert bad_id.status_code == 400 and "FHIR id rule" in _xml_outcome(bad_id)["issue"][0]["diagnostics"]
    assert 400 <= not_forwarded.status_code < 500 and _xml_outcome(not_forwarded)["issue"]
    assert writes(upstream) == []


async def test_async_status_kodjin_status_and_the_result_in_xml(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN}, jobs={"poll_seconds": 0.1})
    xml = {**AUTH, "Accept": "application/fhir+xml"}
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/p1/$purge", headers={**xml, "Prefer": "respond-async"})
        assert accepted.status_code == 202 and _xml_outcome(accepted)["issue"][0]["code"] == "informational"
        url = accepted.headers["Content-Location"]
        done = await until_done(http, url, headers=xml, timeout=60, each=_xml_outcome)
        kodjin = await http.get(f"{proxy}/patient-purge/{url.rsplit('/', 1)[1]}?_format=xml", headers=AUTH)
    assert done.status_code == 200 and done.headers["Content-Type"].startswith("application/fhir+xml")
    bundle = from_xml(done.content, R4)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch-response"
    assert bundle["entry"][0]["response"]["outcome"]["issue"][0]["code"] == "success"
    root = etree.fromstring(kodjin.content)
    assert etree.QName(root).localname == "Parameters"
    status = {p["name"]: p for p in from_xml(kodjin.content, R4)["parameter"]}
    assert status["status"]["valueCode"] == "completed" and status["purgedResourcesCount"]["valueInteger"] == status["totalResourcesCount"]["valueInteger"] > 0


@pytest.fixture
def r5_upstream() -> Iterator[respx.MockRouter]:
    """A FHIR R5 upstream with an empty patient compartment: enough for dry runs."""
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        router.get(f"{BASE}/metadata").respond(200, json={"resourceType": "CapabilityStatement", "fhirVersion": "5.0.0",
                                                          "software": {"name": "Generic"}})
        router.get(f"{BASE}/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
        router.get(url__regex=rf"{BASE}/[A-Za-z]+\?.*").respond(200, json={"resourceType": "Bundle", "type": "searchset"})
        router.route(host="upstream.test").respond(404, json={"resourceType": "OperationOutcome", "issue": []})
        yield router


async def test_the_upstreams_fhir_version_reads_bodies_and_writes_answers(make_proxy, r5_upstream) -> None:
    """R5 has ``valueInteger64``, R4 has not: the body is read with the upstream's tables (and
    then meets the same parameter checks), and the answer is R5 XML the R5 schema accepts."""
    proxy = await make_proxy(BASE, auth={"admin_token": TOKEN})
    integer64 = parameters(boolean("dryRun", "12", "valueInteger64"))
    async with httpx.AsyncClient(timeout=60) as http:
        plan = await http.post(f"{proxy}/Patient/p1/$purge?_format=xml", content=parameters(boolean("dryRun")),
                               headers={**AUTH, **XML})
        typed = await http.post(f"{proxy}/Patient/p1/$purge", content=integer64, headers={**AUTH, **XML})
    assert plan.status_code == 200, plan.text
    assert fhir_schemas.problems(plan.content, "5.0.0") == []
    assert from_xml(plan.content, tables_for("5.0.0"))["issue"][0]["code"] == "informational"
    assert typed.status_code == 400 and "wrong type" in typed.json()["issue"][0]["diagnostics"]  # known to R5
    with pytest.raises(XmlError, match="unknown element 'valueInteger64'"):
        from_xml(integer64, R4)
    assert writes(r5_upstream) == []
