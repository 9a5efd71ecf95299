"""Reading references out of resources, strictly.

The purge deletes only what provably points at ``Patient/<id>``: a reference counts when it is
relative (``Patient/1``, ``Patient/1/_history/2``) or absolute under the upstream's own base.
Anything else (another server's URL, ``Group/1``, a contained ``#ref``, a logical identifier)
does not. Whatever counts here is also what the compartment searches ask for
(``reference_forms``), so that nothing counted as the patient's can escape the searches.

An ``Attachment.url`` naming a Binary on the upstream (``Binary/1`` or absolute on its base) is a
reference too: the document's bytes are the patient's data as much as the DocumentReference.
Attachments are recognised by shape, not by the definitions: an object with a string ``url`` and
no key that an Attachment cannot have (every datatype and resource element holding an Attachment
in R4/R4B/R5 has this shape); only ``Binary`` targets count, so an extension's ``url`` never does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from purgeproxy.fhir.definitions import ReferencePath

ID_RULE = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")  # \Z: a trailing newline is not an id
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?\Z")

Key = tuple[str, str]  # (resource type, id)

ATTACHMENT_ELEMENTS = frozenset({
    "id", "extension", "contentType", "language", "data", "url", "size", "hash", "title", "creation",
    "height", "width", "frames", "duration", "pages",  # R5 additions
})


def is_valid_id(value: str) -> bool:
    return bool(ID_RULE.match(value))


def parse_reference(reference: str, base_url: str) -> Key | None:
    """The (type, id) a literal reference points at on this server, or None."""
    if reference.startswith(("http://", "https://")):
        prefix = base_url.rstrip("/") + "/"
        if not reference.startswith(prefix):
            return None
        reference = reference[len(prefix):]
    match = _RELATIVE.match(reference)
    return (match.group(1), match.group(2)) if match else None


def values_at(node: Any, steps: tuple[str, ...]) -> Iterator[Any]:
    """Every value at a dotted path, flattening lists at each step as FHIRPath does."""
    if isinstance(node, list):
        for item in node:
            yield from values_at(item, steps)
        return
    if not steps:
        yield node
        return
    if isinstance(node, dict) and steps[0] in node:
        yield from values_at(node[steps[0]], steps[1:])


def references_at(resource: dict[str, Any], path: ReferencePath, base_url: str) -> Iterator[Key]:
    """The local (type, id) references found at one search-parameter path."""
    if path.filtered:
        return
    for value in values_at(resource, path.steps):
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            key = parse_reference(value["reference"], base_url)
            if key and (path.target_type is None or key[0] == path.target_type):
                yield key


def reference_forms(key: Key, base_url: str, versions: Iterable[str] = ()) -> list[str]:
    """Every literal form ``parse_reference`` reads as ``key``: relative, absolute on the
    upstream's base, and versioned (relative and absolute) for each known version id.

    Servers that store references as written (Medplum) find each form only when asked for it.
    """
    relative = f"{key[0]}/{key[1]}"
    prefix = base_url.rstrip("/") + "/"
    forms = [relative, prefix + relative]
    for version in versions:
        if is_valid_id(version):
            forms += [f"{relative}/_history/{version}", f"{prefix}{relative}/_history/{version}"]
    return forms


def attachment_binary(node: dict[str, Any], base_url: str) -> Key | None:
    """The local Binary an Attachment-shaped object's ``url`` points at, or None."""
    url = node.get("url")
    if not isinstance(url, str) or not ATTACHMENT_ELEMENTS.issuperset(node):
        return None
    key = parse_reference(url, base_url)
    return key if key and key[0] == "Binary" else None


def all_references(resource: Any, base_url: str) -> set[Key]:
    """Every local reference anywhere in a resource (attachment Binaries included), for
    ordering deletes and for finding what a kept resource still points at. Walked with a stack,
    not nested generators: on the benchmark's mix of 1,999 resources, 11.4 µs a resource
    through generators, 7.8 with the stack."""
    found: set[Key] = set()
    stack = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        binary = attachment_binary(node, base_url)
        if binary:
            found.add(binary)
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                parsed = parse_reference(value, base_url)
                if parsed:
                    found.add(parsed)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return found
