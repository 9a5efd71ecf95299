"""FHIR formats for what the proxy answers itself: negotiation, ``_pretty``, ``_summary``, bytes.

The one mechanism: every answer the proxy makes up (OperationOutcomes, ``Parameters``, async
status Bundles, Kodjin status, job lists, receipts, the augmented CapabilityStatement) is a FHIR
JSON dict handed to ``purgeproxy.render.render(request, resource, status)``, which asks
:func:`requested` what the client wants and :func:`serialize` for the bytes. Nothing here knows
aiohttp. Pass-through traffic never comes here: the upstream's own answers are streamed as they are.

Rules (FHIR R4 http.html#mime-type and search.html#summary):

* ``_format`` wins over ``Accept``; both take the FHIR MIME types, their ``application/json`` /
  ``application/xml`` / ``text/xml`` forms and the ``json`` / ``xml`` shorthands. An ``Accept``
  with q-values is honoured in order; ``*/*`` (or none) gives JSON. Anything else (``text/html``,
  ``ttl``) is :class:`NotAcceptable`: 406, answered in JSON.
* ``_pretty=true`` indents; ``_summary=true|text|data|false`` subsets the resource (elements marked
  summary, text, or all but text) and tags it ``SUBSETTED``; ``count`` only means something for a
  search and is refused, as is any other value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from purgeproxy.fhir.xml import ElementTables, to_xml

JSON, XML = "json", "xml"
MIME = {JSON: "application/fhir+json", XML: "application/fhir+xml"}
_NAMES = {"json": JSON, "application/fhir+json": JSON, "application/json": JSON, "application/json+fhir": JSON,
          "xml": XML, "application/fhir+xml": XML, "application/xml": XML, "text/xml": XML,
          "application/xml+fhir": XML}
_ANY = {"*/*": JSON, "application/*": JSON}
XML_TYPES = frozenset(name for name, fmt in _NAMES.items() if fmt == XML and "/" in name)
FORMAT_PARAMETERS = frozenset({"_format", "_pretty", "_summary"})
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_SUMMARIES = ("true", "text", "data", "false")


class FormatRefused(ValueError):
    """A format request the proxy refuses: ``status`` 406 (cannot produce) or 400 (malformed)."""

    def __init__(self, status: int, code: str, text: str, expression: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text, self.expression = status, code, text, expression


@dataclass(frozen=True)
class Requested:
    """What the client asked for: ``format`` (``json``/``xml``), ``pretty``, ``summary``."""

    format: str = JSON
    pretty: bool = False
    summary: str = "false"

    @property
    def content_type(self) -> str:
        return MIME[self.format]


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _quality(part: str) -> float:
    for param in part.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def _from_accept(accept: str) -> str | None:
    ranked = sorted(((_quality(p), i, _media(p)) for i, p in enumerate(accept.split(",")) if p.strip()),
                    key=lambda t: (-t[0], t[1]))
    for quality, _, media in ranked:
        if quality > 0 and (media in _NAMES or media in _ANY):
            return _NAMES.get(media) or _ANY[media]
    return None


def requested(query: Mapping[str, str], accept: str | None) -> Requested:
    """The format, prettiness and summary a request asks for; :class:`FormatRefused` otherwise."""
    given = query.get("_format")
    if given is not None:
        fmt = _NAMES.get(_media(given))
        if fmt is None:
            raise FormatRefused(406, "not-supported", f"_format '{given[:64]}' cannot be produced: "
                                "use json, xml, application/fhir+json or application/fhir+xml", "_format")
    else:
        fmt = _from_accept(accept) if accept and accept.strip() else JSON
        if fmt is None:
            raise FormatRefused(406, "not-supported", "no format in Accept can be produced: "
                                "use application/fhir+json or application/fhir+xml", "Accept")
    pretty = query.get("_pretty", "false")
    if pretty not in ("true", "false"):
        raise FormatRefused(400, "invalid", "_pretty must be 'true' or 'false'", "_pretty")
    summary = query.get("_summary", "false")
    if summary not in _SUMMARIES:
        raise FormatRefused(400, "not-supported", f"_summary must be one of {', '.join(_SUMMARIES)} "
                            "here (count applies to searches only)", "_summary")
    return Requested(fmt, pretty == "true", summary)


def summarize(resource: dict[str, Any], summary: str, tables: ElementTables) -> dict[str, Any]:
    """``resource`` as ``_summary`` asks, tagged ``SUBSETTED`` when anything was left out."""
    if summary == "false":
        return resource
    if summary == "data":
        kept = {k: v for k, v in resource.items() if k not in ("text", "_text")}
    elif summary == "text":
        mandatory = {name for name, _, flags in tables.entries(resource["resourceType"]) if "m" in flags}
        kept = {k: v for k, v in resource.items()
                if k.lstrip("_") in {"resourceType", "id", "meta", "text", *mandatory}}
    else:
        kept = _summary_only(resource, resource["resourceType"], tables)
    if kept == resource:
        return resource
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    return {**kept, "resourceType": resource["resourceType"], "meta": meta}


def _summary_only(value: dict[str, Any], type_name: str, tables: ElementTables) -> dict[str, Any]:
    """The elements marked summary (and mandatory); backbone elements are summarised in turn,
    data types and contained resources are kept whole."""
    kept: dict[str, Any] = {"resourceType": value["resourceType"]} if "resourceType" in value else {}
    for name, slot in tables.slots(type_name).items():
        if not slot.in_summary:
            continue
        for key in (name, f"_{name}"):
            if key not in value:
                continue
            item = value[key]
            if key == name and "." in slot.type:
                item = ([_summary_only(v, slot.type, tables) for v in item] if isinstance(item, list)
                        else _summary_only(item, slot.type, tables))
            kept[key] = item
    return kept


def serialize(resource: dict[str, Any], wanted: Requested, tables: ElementTables) -> bytes:
    """The answer's body; ``XmlError`` when the resource cannot be written as FHIR XML."""
    resource = summarize(resource, wanted.summary, tables)
    if wanted.format == XML:
        return to_xml(resource, tables, wanted.pretty).encode("utf-8")
    return json.dumps(resource, indent=2 if wanted.pretty else None, ensure_ascii=False).encode("utf-8")
