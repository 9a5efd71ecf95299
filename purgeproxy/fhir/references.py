"""Reading references out of resources, strictly.

The purge deletes only what provably points at ``Patient/<id>``: a reference counts when it is
relative (``Patient/1``, ``Patient/1/_history/2``) or absolute under the upstream's own base.
Anything else (another server's URL, ``Group/1``, a contained ``#ref``, a logical identifier)
does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from purgeproxy.fhir.definitions import ReferencePath

ID_RULE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")

Key = tuple[str, str]  # (resource type, id)


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


def all_references(node: Any, base_url: str) -> Iterator[Key]:
    """Every local reference anywhere in a resource, for ordering deletes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                parsed = parse_reference(value, base_url)
                if parsed:
                    yield parsed
            else:
                yield from all_references(value, base_url)
    elif isinstance(node, list):
        for item in node:
            yield from all_references(item, base_url)
