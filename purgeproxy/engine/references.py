"""Reverse reference searches: which resources reference a given set of resources.

For a target type, every reference search parameter whose ``targets`` include it is searched
(``Observation?subject=Patient/a,Patient/b``), in groups of ids. As in the purge, the answers are
candidates: each hit is checked to reference one of the targets through the searched parameter's
paths, so an upstream that ignores a parameter cannot widen the scope.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.context import Context
from purgeproxy.fhir.references import Key, references_at
from purgeproxy.fhir.search import search_each

IDS_PER_SEARCH = 50  # keeps URLs short; one search per (type, param, group)
PARTS = 4  # batch Bundles of first pages sent side by side


@dataclass
class Referrers:
    """What references the targets: proven hits, rejected candidates, searches that failed."""

    found: dict[Key, dict[str, Any]] = field(default_factory=dict)
    points_at: dict[Key, set[Key]] = field(default_factory=dict)  # hit -> targets it references
    ignored: dict[Key, str] = field(default_factory=dict)  # returned, but no such reference
    unsearchable: dict[str, str] = field(default_factory=dict)  # "Type?param" -> why


async def find_referrers(ctx: Context, targets: list[Key],
                         skip: frozenset[tuple[str, str]] = frozenset()) -> Referrers:
    """Every resource that provably references one of ``targets`` (``skip``: pairs not to search)."""
    result = Referrers()
    by_type: dict[str, list[Key]] = defaultdict(list)
    for key in sorted(set(targets)):
        by_type[key[0]].append(key)
    planned = [
        (rtype, param, keys[start:start + IDS_PER_SEARCH])
        for target_type, keys in by_type.items()
        for rtype, param in ctx.profile.definitions.params_targeting(target_type)
        if (rtype, param) not in skip and _checkable(ctx, rtype, param)
        for start in range(0, len(keys), IDS_PER_SEARCH)
    ]
    searches = []
    for rtype, param, keys in planned:
        if _not_listed(ctx, rtype, param):
            result.unsearchable[f"{rtype}?{param}"] = "the upstream's CapabilityStatement does not list it"
        else:
            searches.append((rtype, param, keys))

    def take(index: int, page: list[dict[str, Any]]) -> None:
        _take(ctx, result, *searches[index], page)

    queries = [(rtype, [(param, ",".join(f"{t}/{i}" for t, i in keys))]) for rtype, param, keys in searches]
    problems = await search_each(ctx.client, ctx.limit, queries, ctx.page_size, PARTS, take)
    for index, why in problems.items():
        result.unsearchable[f"{searches[index][0]}?{searches[index][1]}"] = why
    return result


def _checkable(ctx: Context, rtype: str, param: str) -> bool:
    """Whether a hit of ``rtype?param`` could pass ``_take``'s check: not when every path of the
    parameter is filtered by a FHIRPath ``where`` (the ``relatedArtifact`` params of the
    definitional types, 40 of the 98 searched for a Patient), which ``references_at`` does not
    read. Such a search could only return candidates to ignore, so it is not sent."""
    paths = ctx.profile.definitions.reference_paths(rtype, param) or ()
    return any(not path.filtered for path in paths)


def _not_listed(ctx: Context, rtype: str, param: str) -> bool:
    """The CapabilityStatement lists search params and not this one: skip, but say so."""
    searchable = ctx.profile.searchable
    return searchable is not None and param not in searchable.get(rtype, frozenset())


def _take(ctx: Context, result: Referrers, rtype: str, param: str, keys: list[Key],
          page: list[dict[str, Any]]) -> None:
    """Keep the hits that really reference a target through the searched parameter's paths."""
    wanted = set(keys)
    paths = ctx.profile.definitions.reference_paths(rtype, param) or ()
    for resource in page:
        if resource.get("resourceType") != rtype or not isinstance(resource.get("id"), str):
            continue
        key = (rtype, resource["id"])
        hits = {ref for path in paths for ref in references_at(resource, path, ctx.client.base_url)} & wanted
        if hits:
            result.found[key] = resource
            result.points_at.setdefault(key, set()).update(hits)
            result.ignored.pop(key, None)
        elif key not in result.found:
            result.ignored[key] = f"returned by {rtype}?{param} but references none of the targets"


def references_among(ctx: Context, resource: dict[str, Any], targets: set[Key]) -> set[Key]:
    """The ``targets`` that ``resource`` references through a reference search parameter able to
    point at them: the check ``find_referrers`` makes, for a resource read again later."""
    rtype = resource.get("resourceType")
    definitions, base = ctx.profile.definitions, ctx.client.base_url
    hits: set[Key] = set()
    for target_type in {t for t, _ in targets}:
        for ptype, param in definitions.params_targeting(target_type):
            if ptype == rtype:
                hits |= {ref for path in definitions.reference_paths(ptype, param) or ()
                         for ref in references_at(resource, path, base)}
    return hits & targets
