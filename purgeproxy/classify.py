"""The routing rule: what the upstream will make of a request, decided before it is forwarded.

Every request under the FHIR base is one of three things:

* ``Ordinary``: forwarded as it is, the upstream's own authorization decides (reads, writes,
  plain and conditional deletes, non-destructive operations);
* an ``Operation`` the proxy carries out itself, spelled exactly as its route expects;
* ``Refused`` with an OperationOutcome: a destructive request in any other spelling, one the
  proxy does not carry out, or one whose meaning depends on how a server normalises it.

The rule is written the way servers read requests, not as a list of spellings: the path is
percent-decoded until it no longer changes (``%2524`` is ``$``), empty segments and a trailing
slash are dropped, operation names are compared on their letters only and without case
(``$EXPUNGE``, ``$hapi.fhir.expunge``), matrix parameters (``;``) are refused, query parameter
names are decoded and folded the same way, method overrides (``X-HTTP-Method-Override``,
``_method``) count as the method, and every entry of a Bundle posted to the base is classified
with the same function. Pure and framework-free: :mod:`purgeproxy.passthrough` applies it to
every request it would forward, the DELETE handlers use it to tell a cascade from a plain delete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from purgeproxy.forwarding import unsafe_path_reason

# Letters of an operation name that make it destructive, wherever they appear in it:
# $purge (HL7, Firely, Google), $erase (Firely, IBM), $expunge and $delete-expunge (HAPI, Medplum),
# $purge-history (Microsoft), $patient-purge and $bulk-purge (Kodjin), $bulk-delete (Microsoft).
_DESTRUCTIVE_WORDS = ("purge", "expunge", "erase", "bulkdelete")
# The ones the proxy carries out itself, with the paths (relative to the base) its routes accept.
# "T" is a resource type segment, "I" an id segment, "$" the operation itself.
_SHAPES: dict[str, tuple[frozenset[str], tuple[tuple[str, ...], ...]]] = {
    "$purge": (frozenset({"GET", "POST"}), (("Patient", "I", "$"), ("Group", "I", "$"))),
    "$bulk-purge": (frozenset({"POST"}), (("Patient", "$"),)),
    "$bulk-delete": (frozenset({"DELETE"}), (("$",), ("T", "$"))),
    "$erase": (frozenset({"POST"}), (("T", "I", "$"), ("T", "I", "_history", "I", "$"))),
    "$expunge": (frozenset({"POST"}), (("$",), ("T", "$"), ("T", "I", "$"), ("T", "I", "_history", "I", "$"))),
    "$delete-expunge": (frozenset({"POST"}), (("$",),)),
}
_BY_LETTERS = {re.sub("[^a-z]", "", name): name for name in _SHAPES}
# Spellings authorized as another operation: Kodjin's bulk purge is many $purges.
_AUTHORIZED_AS = {"$bulk-purge": "$purge", "$bulk-delete": "$delete-expunge"}
CASCADE = "cascade-delete"  # the proxy's name for DELETE ... ?_cascade=delete (and X-Cascade)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
_MAX_DECODES = 3  # "%25252524" is nobody's honest spelling of "$"
_MAX_NESTING = 2  # a Bundle in an entry of a Bundle posted to the base, and no deeper


@dataclass(frozen=True, slots=True)
class Ordinary:
    """Forward unchanged: the upstream authorizes it with the client's own credentials."""


@dataclass(frozen=True, slots=True)
class Inspect:
    """A POST to the base: its body (a batch or transaction Bundle?) decides, see ``classify_body``."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One of the proxy's own operations, spelled as its route expects."""

    name: str  # as authorized: $purge, $erase, $expunge, $delete-expunge, cascade-delete
    target: str | None  # the resource type the path names (None at system level)


@dataclass(frozen=True, slots=True)
class Refused:
    """Answered by the proxy with an OperationOutcome; nothing reaches the upstream."""

    status: int
    code: str
    text: str
    expression: str | None = None


Verdict = Ordinary | Inspect | Operation | Refused
ORDINARY = Ordinary()
INSPECT = Inspect()
_NOT_FORWARDED = "; nothing was forwarded to the upstream"


def classify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str]) -> Verdict:
    """The verdict for one request; ``raw_path`` is after the base, still percent-encoded.

    ``headers`` must look names up case-insensitively (aiohttp's and multidict's do). Most
    requests are settled by a few substring tests (``_plain``); only the rest are parsed.
    """
    if _plain(method, raw_path, raw_query, headers):
        return ORDINARY
    pairs = parse_qsl(raw_query, keep_blank_values=True) if raw_query else []
    effective = _effective_method(method, pairs, headers)
    if isinstance(effective, Refused):
        return effective
    return _classify(method, effective, raw_path, pairs, headers)


def _plain(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str]) -> bool:
    """Ordinary for certain without parsing: no ``$``, escape or ``;`` in the path, no method
    override, not a POST to the base, and for a DELETE nothing that could be a flag or history."""
    if "$" in raw_path or "%" in raw_path or ";" in raw_path:
        return False
    query = _unquoted(raw_query).lower()
    if "method" in query or _has_override_header(headers):
        return False
    if method == "POST":
        return raw_path.strip("/") != ""
    if method == "DELETE":
        return not ("cascade" in query or "expunge" in query
                    or "X-Cascade" in headers or "_history" in raw_path.lower())
    return method in METHODS


def _has_override_header(headers: Mapping[str, str]) -> bool:
    """Any method override header: a plain loop, as a generator cost a few calls on every
    pass-through request."""
    for name in _OVERRIDE_HEADERS:
        if name in headers:
            return True
    return False


def _classify(method: str, effective: str, raw_path: str, pairs: Sequence[tuple[str, str]],
              headers: Mapping[str, str]) -> Verdict:
    levels = _decodings(raw_path)
    if isinstance(levels, Refused):
        return levels
    segments = [s for s in levels[-1].split("/") if s]
    shown = levels[1].lstrip("/")[:120] or "[base]"  # as the client sent it, decoded once
    destructive = [s for s in segments if "$" in s and _is_destructive(s)]
    if destructive:
        return _operation(method, effective, levels, segments, destructive, shown)
    if effective == "DELETE":
        return _delete(method, levels, segments, pairs, headers, shown)
    if effective == "POST" and not segments:
        return INSPECT
    return ORDINARY


def _effective_method(method: str, pairs: Sequence[tuple[str, str]],
                      headers: Mapping[str, str]) -> str | Refused:
    """The method the upstream may act on: an override header or ``_method`` counts."""
    given = [v for h in _OVERRIDE_HEADERS if h in headers for v in _all(headers, h)]
    given += [v for n, v in pairs if _param_name(n) == "_method"]
    if not given:
        return method.upper()
    named = {v.strip().upper() for v in given}
    if len(named) != 1 or not named <= METHODS:
        return Refused(400, "invalid", "conflicting or unknown method overrides" + _NOT_FORWARDED)
    return named.pop()


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [headers[name]] if name in headers else []


def _decodings(raw_path: str) -> list[str] | Refused:
    """The path as sent, then decoded once (what a server routes on), and on until it is stable;
    every level must be as safe as the raw path (no dot segments, encoded '/', NUL ...)."""
    levels = [raw_path]
    while "%" in levels[-1]:
        if len(levels) > _MAX_DECODES:
            return Refused(400, "invalid", "the path is percent-encoded too many times" + _NOT_FORWARDED)
        levels.append(unquote(levels[-1]))
        if levels[-1] == levels[-2]:
            levels.pop()
            break
    if len(levels) == 1:
        levels.append(raw_path)
    for level in dict.fromkeys(levels):  # each distinct level once
        reason = unsafe_path_reason(level)
        if reason:
            return Refused(400, "invalid", reason + _NOT_FORWARDED)
        if ";" in level:
            return Refused(400, "invalid", "matrix parameters (';') are not part of FHIR paths" + _NOT_FORWARDED)
    return levels


def _letters(text: str) -> str:
    return re.sub("[^a-z]", "", text.lower())


def _is_destructive(segment: str) -> bool:
    letters = _letters(segment)
    return any(word in letters for word in _DESTRUCTIVE_WORDS)


def _unquoted(text: str) -> str:
    """Percent-decoded until stable (at most ``_MAX_DECODES`` times)."""
    for _ in range(_MAX_DECODES):
        if "%" not in text:
            break
        text = unquote(text)
    return text


def _param_name(name: str) -> str:
    """A query parameter's name as a lenient server might read it: decoded, folded, no modifier."""
    return _unquoted(name).split(":")[0].strip().lower()


def _operation(method: str, effective: str, levels: list[str], segments: list[str],
               destructive: list[str], shown: str) -> Verdict:
    """A destructive operation: the proxy's own when spelled as its route expects, else refused."""
    name = _BY_LETTERS.get(_letters(destructive[0]))
    if name is None or len(destructive) > 1:
        return Refused(422, "not-supported", f"'{shown}' names a destructive operation that purgeproxy "
                       "does not carry out (it carries out $purge, $erase, $expunge, $delete-expunge "
                       "and _cascade=delete)" + _NOT_FORWARDED)
    methods, shapes = _SHAPES[name]
    shape = next((s for s in shapes if _fits(s, segments, name)), None)
    if shape is None:
        return Refused(400, "invalid", f"{name} is carried out by purgeproxy at {_forms(name)} only"
                       + _NOT_FORWARDED)
    canonical = "/".join(name if part == "$" else seg if part in ("T", "I") else part
                         for part, seg in zip(shape, segments, strict=True))
    if effective not in methods or method.upper() != effective:
        return Refused(405, "not-supported", f"{name} accepts {' or '.join(sorted(methods))} "
                       f"[base]/{canonical} only" + _NOT_FORWARDED)
    if levels[1] != "/" + canonical or len(levels) > 2:
        return Refused(400, "invalid", f"'{shown}' is not how purgeproxy accepts {name}: send "
                       f"{'/'.join(sorted(methods))} [base]/{canonical}" + _NOT_FORWARDED)
    return Operation(_AUTHORIZED_AS.get(name, name), segments[0] if shape[0] != "$" else None)


def _fits(shape: tuple[str, ...], segments: list[str], name: str) -> bool:
    if len(shape) != len(segments):
        return False
    for part, segment in zip(shape, segments, strict=True):
        if part == "$":
            if _BY_LETTERS.get(_letters(segment)) != name:
                return False
        elif part in ("T", "I"):
            if "$" in segment or segment.lower() == "_history":
                return False
        elif segment.lower() != part.lower():
            return False
    return True


def _forms(name: str) -> str:
    methods, shapes = _SHAPES[name]
    paths = ["[base]" + "".join("/" + {"T": "<Type>", "I": "<id>", "$": name}.get(p, p) for p in s)
             for s in shapes]
    return f"{'/'.join(sorted(methods))} " + ", ".join(paths)


def _delete(method: str, levels: list[str], segments: list[str], pairs: Sequence[tuple[str, str]],
            headers: Mapping[str, str], shown: str) -> Verdict:
    """A DELETE is ordinary unless it cascades, expunges or removes history."""
    flags = _flags(pairs, headers)
    history = any(s.lower() == "_history" for s in segments)
    if not flags:
        if history:
            return Refused(422, "not-supported", "deleting history is permanent and is not passed "
                           "through; use POST [base]/<Type>/<id>/_history/<vid>/$expunge or $erase"
                           + _NOT_FORWARDED)
        return ORDINARY
    name = CASCADE if "_cascade" in flags else "$delete-expunge"
    exact = (method.upper() == "DELETE" and len(levels) == 2 and levels[1] == "/" + "/".join(segments)
             and all(n in ("_cascade", "_expunge") for n, _ in pairs if _param_name(n) in flags))
    if exact and not history and len(segments) in (1, 2) and "$" not in levels[1]:
        return Operation(name, segments[0])
    wanted = ("DELETE [base]/<Type>/<id>?_cascade=delete" if name == CASCADE
              else "DELETE [base]/<Type>?<criteria>&_expunge=true")
    return Refused(400, "invalid", f"'{shown}' with {' and '.join(sorted(flags))} is destructive and "
                   f"purgeproxy accepts it only as {wanted}" + _NOT_FORWARDED)


def _flags(pairs: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> set[str]:
    """``_cascade`` (any value, or an ``X-Cascade`` header) and ``_expunge`` (unless exactly
    ``false``) on a DELETE; ``_expunge=false`` is the plain delete it says it is."""
    found = {"_cascade"} if "X-Cascade" in headers else set()
    for name, value in pairs:
        folded = _param_name(name)
        if folded == "_cascade" or (folded == "_expunge" and value != "false"):
            found.add(folded)
    return found


# ---- Bundles posted to the base ------------------------------------------------------------

def classify_body(body: bytes) -> Verdict:
    """A POST to the base: ordinary unless it is a Bundle with a destructive entry.

    The upstream may sniff the format whatever the Content-Type says, so the bytes decide: empty
    or a JSON object are classified, anything else (XML, which cannot be parsed safely here) is
    refused. Duplicate keys are refused: two parsers could read different entries from them.
    """
    text = _text(body)
    if isinstance(text, Refused):
        return text
    if not text.strip():
        return ORDINARY
    if not text.lstrip().startswith("{"):
        return Refused(415, "not-supported", "purgeproxy inspects what is posted to the base for "
                       "destructive Bundle entries and accepts it as JSON only" + _NOT_FORWARDED)
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as problem:
        why = str(problem) if isinstance(problem, _Duplicate) else "the body is not valid JSON"
        return Refused(400, "invalid", why + _NOT_FORWARDED)
    return _bundle(document, "Bundle", 0)


def _text(body: bytes) -> str | Refused:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Refused(415, "not-supported", "the body posted to the base is not UTF-8 JSON" + _NOT_FORWARDED)


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _Duplicate(f"the JSON body repeats the key '{key[:40]}'")
        document[key] = value
    return document


def _bundle(document: Any, where: str, depth: int) -> Verdict:
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return ORDINARY  # not a Bundle: the upstream refuses it, or it is no transaction
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        return Refused(400, "invalid", f"{where}.entry is not a list" + _NOT_FORWARDED, f"{where}.entry")
    for index, entry in enumerate(entries):
        verdict = _entry(entry, f"{where}.entry[{index}]", depth)
        if not isinstance(verdict, Ordinary):
            return verdict
    return ORDINARY


def _entry(entry: Any, where: str, depth: int) -> Verdict:
    request = entry.get("request") if isinstance(entry, dict) else None
    if request is None:
        return ORDINARY
    method, url = (request.get("method"), request.get("url")) if isinstance(request, dict) else (None, None)
    if not (isinstance(method, str) and isinstance(url, str) and method.strip().upper() in METHODS):
        return Refused(400, "invalid", f"{where}.request needs a method and a url" + _NOT_FORWARDED,
                       f"{where}.request")
    parts = urlsplit(url.strip())
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    effective = method.strip().upper()
    verdict = _classify(effective, effective, path, pairs, {})
    if isinstance(verdict, Inspect):
        if depth >= _MAX_NESTING:
            return Refused(400, "invalid", f"{where} nests Bundles too deeply" + _NOT_FORWARDED, where)
        return _bundle(entry.get("resource"), f"{where}.resource", depth + 1)
    if isinstance(verdict, Ordinary):
        return verdict
    if isinstance(verdict, Refused):
        return Refused(verdict.status, verdict.code, f"{where}: {verdict.text}", f"{where}.request")
    return Refused(422, "business-rule", f"{where} is a destructive request ({verdict.name}); "
                   "purgeproxy carries these out itself, one request at a time, never inside a batch "
                   "or transaction" + _NOT_FORWARDED, f"{where}.request")
