"""A scripted upstream for fault and scope tests (respx): just enough FHIR to purge ``p1``.

Integration tests use real servers; this one exists to misbehave on purpose, e.g. to answer
``Observation?subject=Patient/p1`` with everybody's Observations, as a server does when it
silently drops a search parameter it does not support.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import respx

BASE = "http://upstream.test/fhir"
TOKEN = "scope-token"


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def observation(oid: str, subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": subject}}


CAPABILITY = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "software": {"name": "Generic"}}


class FakeStore:
    """Just enough state that deleted resources stop showing up, as on a real server."""

    def __init__(self) -> None:
        self.deleted: set[str] = set()

    def patient(self, request: httpx.Request) -> httpx.Response:
        if "Patient/p1" in self.deleted:
            return httpx.Response(410, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})

    def observations(self, request: httpx.Request) -> httpx.Response:
        found = [observation("mine", "Patient/p1"),
                 observation("versioned", f"{BASE}/Patient/p1/_history/3"),
                 observation("someone-else", "Patient/p2"),
                 observation("group-trap", "Group/p1"),
                 observation("other-server", "http://elsewhere.test/fhir/Patient/p1")]
        return httpx.Response(200, json=bundle(*[o for o in found if f"Observation/{o['id']}" not in self.deleted]))

    def read(self, request: httpx.Request) -> httpx.Response:
        """``Observation/<id>``, as a search found it, until it is deleted."""
        oid = request.url.path.rsplit("/", 1)[1]
        found = [o for o in self.observations(request).json().get("entry", []) if o["resource"]["id"] == oid]
        if not found:
            return httpx.Response(410, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=found[0]["resource"])

    def transaction(self, request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["type"] != "transaction":  # no batch support: searches go one by one
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        entries = json.loads(request.content)["entry"]
        self.deleted.update(e["request"]["url"] for e in entries)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                         "entry": [{"response": {"status": "204 No Content"}} for _ in entries]})


def scripted_upstream() -> Iterator[respx.MockRouter]:
    store = FakeStore()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()  # the test's own calls to the proxy
        router.get(f"{BASE}/metadata").respond(200, json=CAPABILITY)
        router.get(f"{BASE}/Patient/p1").mock(side_effect=store.patient)
        # a generic upstream is asked for every form of the reference the proxy counts
        router.get(f"{BASE}/Observation", params={"subject": f"Patient/p1,{BASE}/Patient/p1"}).mock(
            side_effect=store.observations)
        router.get(url__regex=rf"{BASE}/Observation/[^/?]+$").mock(side_effect=store.read)
        router.get(url__regex=rf"{BASE}/[A-Za-z]+\?.*").respond(200, json=bundle())
        router.get(url__regex=rf"{BASE}/[A-Za-z]+/[^/]+/_history").respond(
            404, json={"resourceType": "OperationOutcome", "issue": []})
        router.post(BASE).mock(side_effect=store.transaction)
        yield router


WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _reads_only(request: httpx.Request) -> bool:
    """A batch Bundle of GET entries: searches sent together, not a write."""
    try:
        bundle = json.loads(request.content)
    except ValueError:
        return False
    entries = bundle.get("entry") or [] if isinstance(bundle, dict) else []
    return bundle.get("type") == "batch" and all(e["request"]["method"] == "GET" for e in entries)


def writes(router: respx.MockRouter) -> list[str]:
    """Every write the proxy sent upstream."""
    return [f"{c.request.method} {c.request.url}" for c in router.calls
            if c.request.method in WRITES and c.request.url.host != "127.0.0.1"
            and not _reads_only(c.request)]


def upstream_calls(router: respx.MockRouter) -> list[str]:
    return [f"{c.request.method} {c.request.url}" for c in router.calls if c.request.url.host != "127.0.0.1"]
