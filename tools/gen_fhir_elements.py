#!/usr/bin/env python3
"""Generate the element tables the FHIR XML converter needs (``purgeproxy/fhir/xml.py``).

Writes ``purgeproxy/fhir/data/elements-r4.json``, ``elements-r4b.json`` and ``elements-r5.json``
from the snapshots of the OFFICIAL StructureDefinitions (standard library only), the same pinned
sources as ``tools/gen_fhir_data.py``:

* R4 (4.0.1): ``org/hl7/fhir/r4/model/profile/profiles-{resources,types}.xml`` in Maven Central's
  ``ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0`` (the spec's files unmodified);
* R4B (4.3.0) and R5 (5.0.0): ``package/StructureDefinition-*.json`` of the npm packages
  ``hl7.fhir.r4b.core@4.3.0`` and ``hl7.fhir.r5.core@5.0.0``.

Output shape (compact JSON, sorted keys): ``fhirVersion``, ``primitives`` (primitive type names),
``resources`` (concrete resource type names) and ``types[name]`` = the type's elements in the
order the XML must have them, each ``[name, types, flags]``: ``types`` a list of type codes (more
than one only for a choice ``name[x]``, whose JSON/XML names are ``name`` + the capitalised type);
a code containing a dot names a backbone element table (``Bundle.entry``) in ``types`` too;
``flags`` a string of ``*`` (repeats), ``@`` (an XML attribute: ``Element.id``, ``Extension.url``)
``s`` (in the summary, for ``_summary=true``), ``m`` (mandatory, min >= 1) and ``x`` (a choice).

Run from the repository root, with the three artifacts in ``--cache-dir`` (default
``~/.cache/purgeproxy/fhir-sources``, same names as for ``gen_fhir_data.py``; the Maven jar is also
looked up in ``~/.m2``)::

    python3 tools/gen_fhir_elements.py
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

FHIR_NS = "{http://hl7.org/fhir}"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                "Date": "date", "DateTime": "dateTime", "Time": "time"}
R4_JAR = "hapi-fhir-validation-resources-r4-8.4.0.jar"
R4_M2 = Path.home() / ".m2/repository/ca/uhn/hapi/fhir/hapi-fhir-validation-resources-r4/8.4.0" / R4_JAR
PACKAGES = {"r4b": "hl7.fhir.r4b.core-4.3.0.tgz", "r5": "hl7.fhir.r5.core-5.0.0.tgz"}


def _xml_value(node: ElementTree.Element, name: str) -> str | None:
    child = node.find(FHIR_NS + name)
    return None if child is None else child.get("value")


def _xml_element(node: ElementTree.Element) -> dict[str, Any]:
    """The parts of an R4 ElementDefinition (XML) this generator reads, as JSON would have them."""
    types = []
    for type_node in node.findall(FHIR_NS + "type"):
        extensions = [{"url": ext.get("url"), "valueUrl": _xml_value(ext, "valueUrl") or _xml_value(ext, "valueUri")}
                      for ext in type_node.findall(FHIR_NS + "extension")]
        code = type_node.find(FHIR_NS + "code")
        code_ext = [] if code is None else [
            {"url": ext.get("url"), "valueUrl": _xml_value(ext, "valueUrl") or _xml_value(ext, "valueString")}
            for ext in code.findall(FHIR_NS + "extension")]
        types.append({"code": None if code is None else code.get("value"), "extension": extensions + code_ext})
    return {"path": _xml_value(node, "path"), "type": types, "max": _xml_value(node, "max"),
            "min": int(_xml_value(node, "min") or 0),
            "representation": [r.get("value") for r in node.findall(FHIR_NS + "representation")],
            "isSummary": _xml_value(node, "isSummary") == "true",
            "contentReference": _xml_value(node, "contentReference")}


def _r4_definitions(jar: Path) -> list[dict[str, Any]]:
    found = []
    with zipfile.ZipFile(jar) as archive:
        for name in ("profiles-resources.xml", "profiles-types.xml"):
            root = ElementTree.fromstring(archive.read(f"org/hl7/fhir/r4/model/profile/{name}"))
            for sd in root.iter(FHIR_NS + "StructureDefinition"):
                snapshot = sd.find(FHIR_NS + "snapshot")
                if snapshot is None:
                    continue
                found.append({"name": _xml_value(sd, "name"), "type": _xml_value(sd, "type"),
                              "kind": _xml_value(sd, "kind"), "abstract": _xml_value(sd, "abstract") == "true",
                              "derivation": _xml_value(sd, "derivation"),
                              "snapshot": {"element": [_xml_element(e) for e in snapshot.findall(FHIR_NS + "element")]}})
    return found


def _package_definitions(tgz: Path) -> list[dict[str, Any]]:
    found = []
    with tarfile.open(tgz) as archive:
        for member in archive.getmembers():
            if member.name.startswith("package/StructureDefinition-") and member.name.endswith(".json"):
                data = json.load(io.TextIOWrapper(archive.extractfile(member), "utf-8"))  # type: ignore[arg-type]
                if "snapshot" in data:
                    found.append(data)
    return found


def _type_code(entry: dict[str, Any]) -> str:
    code = entry["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        declared = next((e.get("valueUrl") or e.get("valueUri") for e in entry.get("extension") or []
                         if e.get("url") == FHIR_TYPE_EXT), None)
        return declared or SYSTEM_TYPES[code.rsplit(".", 1)[1]]
    return code


def _tables(definition: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """The type's element table and one per backbone element, keyed by type name / path."""
    elements = definition["snapshot"]["element"]
    root = elements[0]["path"]
    paths = {e["path"] for e in elements}
    tables: dict[str, list[list[Any]]] = {definition["type"] if root == definition["type"] else root: []}
    for element in elements[1:]:
        path = element["path"]
        if ":" in path:  # slices are not elements of their own
            continue
        parent, name = path.rsplit(".", 1)
        key = definition["type"] if parent == root else parent
        if any(p.startswith(path + ".") for p in paths):
            types = [path]
        elif element.get("contentReference"):
            types = [element["contentReference"].split("#", 1)[1]]
        else:
            types = [_type_code(t) for t in element.get("type") or []]
        flags = ("*" if element.get("max") not in ("0", "1") else "") + \
                ("@" if "xmlAttr" in (element.get("representation") or []) else "") + \
                ("s" if element.get("isSummary") else "") + ("m" if int(element.get("min") or 0) >= 1 else "") + \
                ("x" if name.endswith("[x]") else "")
        tables.setdefault(key, []).append([name.removesuffix("[x]"), types, flags])
    return tables


def build(definitions: list[dict[str, Any]], version: str) -> dict[str, Any]:
    base = [d for d in definitions if d.get("derivation") != "constraint" and d.get("kind") != "logical"]
    types: dict[str, list[list[Any]]] = {}
    for definition in base:
        if definition["kind"] == "primitive-type":
            continue
        types.update(_tables(definition))
    return {"fhirVersion": version, "types": types,
            "primitives": sorted(d["type"] for d in base if d["kind"] == "primitive-type"),
            "resources": sorted(d["type"] for d in base if d["kind"] == "resource" and not d.get("abstract"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/purgeproxy/fhir-sources")
    parser.add_argument("--out-dir", type=Path, default=Path("purgeproxy/fhir/data"))
    args = parser.parse_args()
    jar = args.cache_dir / R4_JAR if (args.cache_dir / R4_JAR).exists() else R4_M2
    sources = {"r4": (_r4_definitions(jar), "4.0.1"),
               "r4b": (_package_definitions(args.cache_dir / PACKAGES["r4b"]), "4.3.0"),
               "r5": (_package_definitions(args.cache_dir / PACKAGES["r5"]), "5.0.0")}
    for key, (definitions, version) in sources.items():
        out = args.out_dir / f"elements-{key}.json"
        out.write_text(json.dumps(build(definitions, version), sort_keys=True, separators=(",", ":")) + "\n", "utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
