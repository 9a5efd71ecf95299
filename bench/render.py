"""Cost of rendering the proxy's own answers: JSON against FHIR XML, and reading the XML back.

Run: ``.venv/bin/python bench/render.py``. Two documents: a 5,000-issue OperationOutcome (a large
purge report) and a CapabilityStatement listing every R4 resource type with 7 interactions and 30
search parameters each (a large upstream statement). Pass-through traffic never renders.
"""

from __future__ import annotations

import time
from typing import Any

from purgeproxy.fhir.formats import JSON, XML, Requested, serialize
from purgeproxy.fhir.outcome import issue, outcome
from purgeproxy.fhir.xml import ElementTables, from_xml, tables_for

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")


def documents(tables: ElementTables) -> dict[str, dict[str, Any]]:
    report = outcome(*[issue("information", "informational", f"kept: Observation/o{i}: shared",
                             expression=["Observation"]) for i in range(5000)])
    resources = [{"type": rtype, "interaction": [{"code": code} for code in INTERACTIONS],
                  "searchParam": [{"name": f"p{j}", "type": "token",
                                   "definition": f"http://hl7.org/fhir/SearchParameter/{rtype}-p{j}"} for j in range(30)]}
                 for rtype in sorted(tables.resources)]
    statement = {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-01-01", "kind": "instance",
                 "fhirVersion": "4.0.1", "format": ["json", "xml"], "rest": [{"mode": "server", "resource": resources}]}
    return {"OperationOutcome, 5000 issues": report, f"CapabilityStatement, {len(resources)} types": statement}


def _ms(started: float, runs: int = 1) -> float:
    return (time.perf_counter() - started) / runs * 1000


def main(runs: int = 20) -> None:
    tables = tables_for("4.0.1")
    for name, document in documents(tables).items():
        for fmt in (JSON, XML):
            started = time.perf_counter()
            for _ in range(runs):
                body = serialize(document, Requested(fmt), tables)
            print(f"{name}: {fmt} {len(body) // 1024} KiB in {_ms(started, runs):.1f} ms")
        started = time.perf_counter()
        from_xml(body, tables)
        print(f"{name}: read back from XML in {_ms(started):.1f} ms")
    tables_for.cache_clear()
    started = time.perf_counter()
    tables_for("5.0.0")
    print(f"loading the R5 element tables: {_ms(started):.1f} ms")


if __name__ == "__main__":
    main()
