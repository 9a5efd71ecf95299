"""Reverse reference searches: which resources reference a given set of resources.

For a target type, every reference search parameter whose ``targets`` include it is searched
(``Observation?subject=Patient/a,Patient/b``), in groups of ids. As in the purge, the answers are
candidates: each hit is checked to reference one of the targets through the searched parameter's
paths, so an upstream that ignores a parameter cannot widen the scope.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.context import Context, search_all
from purgeproxy.fhir.references import Key, references_at

IDS_PER_SEARCH = 50  # keeps URLs short; one search per (type, param, group)


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
    searches = [
        (rtype, param, keys[start:start + IDS_PER_SEARCH])
        for target_type, keys in by_type.items()
        for rtype, param in ctx.profile.definitions.params_targeting(target_type)
        if (rtype, param) not in skip
        for start in range(0, len(keys), IDS_PER_SEARCH)
    ]
    await asyncio.gather(*(_search(ctx, result, *search) for search in searches))
    return result


def _not_listed(ctx: Context, rtype: str, param: str) -> bool:
    """The CapabilityStatement lists search params and not this one: skip, but say so."""
    searchable = ctx.profile.searchable
    return searchable is not None and param not in searchable.get(rtype, frozenset())


async def _search(ctx: Context, result: Referrers, rtype: str, param: str, keys: list[Key]) -> None:
    if _not_listed(ctx, rtype, param):
        result.unsearchable[f"{rtype}?{param}"] = "the upstream's CapabilityStatement does not list it"
        return
    value = ",".join(f"{t}/{i}" for t, i in keys)
    found = await search_all(ctx, rtype, [(param, value)])
    if found.problem:
        result.unsearchable[f"{rtype}?{param}"] = found.problem
        return
    wanted = set(keys)
    paths = ctx.profile.definitions.reference_paths(rtype, param) or ()
    for key, resource in found.matches.items():
        hits = {ref for path in paths for ref in references_at(resource, path, ctx.client.base_url)} & wanted
        if hits:
            result.found[key] = resource
            result.points_at.setdefault(key, set()).update(hits)
            result.ignored.pop(key, None)
        elif key not in result.found:
            result.ignored[key] = f"returned by {rtype}?{param} but references none of the targets"
