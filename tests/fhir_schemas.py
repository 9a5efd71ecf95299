"""The official FHIR XML schemas (``fhir-single.xsd``), to check what the proxy writes as XML.

R4's ship in Maven Central's ``hapi-fhir-validation-resources-r4`` (the jar HAPI's build already
puts in ``~/.m2``), R5's in the npm package ``hl7.fhir.r5.core`` (``package/xml``); each is fetched
with the ordinary client when absent and cached in ``~/.cache/purgeproxy/fhir-sources``, as
``tools/gen_fhir_data.py`` does. R4B ships no schemas: its XML is checked by reading it back.
"""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from functools import cache
from pathlib import Path

from lxml import etree

CACHE = Path.home() / ".cache/purgeproxy/fhir-sources"
R4_GAV = "ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.4.0"
R4_JAR = Path.home() / ".m2/repository/ca/uhn/hapi/fhir/hapi-fhir-validation-resources-r4/8.4.0" \
    / "hapi-fhir-validation-resources-r4-8.4.0.jar"
R5_TGZ = "hl7.fhir.r5.core-5.0.0.tgz"


def _r4_dir() -> Path:
    out = CACHE / "xsd-r4"
    if not (out / "fhir-single.xsd").exists():
        if not R4_JAR.exists():
            subprocess.run(["mvn", "-q", "dependency:get", f"-Dartifact={R4_GAV}", "-Dtransitive=false"], check=True)
        out.mkdir(parents=True, exist_ok=True)
        prefix = "org/hl7/fhir/r4/model/schema/"
        with zipfile.ZipFile(R4_JAR) as jar:
            for name in jar.namelist():
                if name.startswith(prefix) and name.endswith(".xsd"):
                    (out / name[len(prefix):]).write_bytes(jar.read(name))
    return out


def _r5_dir() -> Path:
    out = CACHE / "xsd-r5"
    if not (out / "fhir-single.xsd").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        if not (CACHE / R5_TGZ).exists():
            subprocess.run(["npm", "pack", "hl7.fhir.r5.core@5.0.0"], cwd=CACHE, check=True, capture_output=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CACHE / R5_TGZ) as archive:
            for member in archive.getmembers():
                if member.name.startswith("package/xml/") and member.name.endswith(".xsd"):
                    (out / Path(member.name).name).write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    return out


@cache
def schema(fhir_version: str) -> etree.XMLSchema:
    """The schema of ``4.0.1`` or ``5.0.0``."""
    folder = _r4_dir() if fhir_version.startswith("4.0") else _r5_dir()
    return etree.XMLSchema(etree.parse(str(folder / "fhir-single.xsd")))


def problems(document: bytes, fhir_version: str) -> list[str]:
    """What the schema finds wrong with ``document`` (empty when it is valid)."""
    checker = schema(fhir_version)
    if checker.validate(etree.fromstring(document)):
        return []
    return [f"line {e.line}: {e.message}" for e in checker.error_log]
