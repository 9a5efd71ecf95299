"""Delete-expunge: every resource matching a search, deleted and expunged (HAPI's shape).

The matches are found first with a strict search (an unknown parameter is an error, not an empty
criterion). A reference criterion with a literal ``Type/id`` value is also checked on every match,
as the purge checks compartment members: a match that does not carry the reference is kept. A
search with no criteria, or with more matches than ``purge.max_without_confirm``, is refused
unless confirmed: a typo must not empty a table.

A match is deleted in the version the search returned; one changed since is searched for again
(its criteria and its ``_id``, answered by the upstream for its current state) and kept if it no
longer matches. After deleting, the criteria are searched once more: whatever matches then is
what remains, measured rather than assumed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from purgeproxy.engine.context import refuse_protected
from purgeproxy.engine.rail import check_confirmed
from purgeproxy.engine.removal import (
    Context,
    Recheck,
    Refused,
    Result,
    order_resources,
    remove,
    search_all,
    versions_of,
)
from purgeproxy.fhir.references import Key, parse_reference, references_at

# Search result parameters change what comes back, not what matches: never part of criteria.
RESULT_PARAMS = frozenset({"_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
                           "_contained", "_containedType", "_total", "_format", "_pretty", "_offset"})


@dataclass(frozen=True)
class Criteria:
    rtype: str
    params: list[tuple[str, str]]

    @property
    def shown(self) -> str:
        """For outcomes and logs: parameter names only, never their values (patient data)."""
        names = sorted({name for name, _ in self.params})
        return f"{self.rtype}?{'&'.join(names)}" if names else self.rtype


def parse_criteria(url: str, resource_types: frozenset[str]) -> Criteria:
    """``Type?criteria`` (relative), refused when it is anything else."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or parts.fragment or "/" in parts.path:
        raise Refused(400, "invalid", "url must be a relative search: Type?criteria")
    if parts.path not in resource_types:
        raise Refused(400, "invalid", f"url: '{parts.path}' is not a resource type of this server's FHIR version")
    refuse_protected(parts.path)
    params = parse_qsl(parts.query, keep_blank_values=True)
    for name, value in params:
        if name.split(":")[0] in RESULT_PARAMS:
            raise Refused(400, "invalid", f"url: '{name}' shapes search results and is not a criterion")
        if not value:
            raise Refused(400, "invalid", f"url: criterion '{name}' has no value")
    return Criteria(parts.path, params)


async def find_matches(ctx: Context, criteria: Criteria, removal: Result) -> dict[Key, dict[str, Any]]:
    """The strict search's matches that pass the reference check."""
    found = await search_all(ctx, criteria.rtype, criteria.params)
    if found.problem:
        raise Refused(400, "invalid", f"the upstream refused the search {criteria.shown}: {found.problem}; nothing was deleted")
    checks = _reference_checks(ctx, criteria)
    matches = {}
    for key, resource in found.matches.items():
        if all(_references(ctx, resource, param, target) for param, target in checks):
            matches[key] = resource
        else:
            removal.kept[key] = (f"returned by {criteria.shown} but does not carry the reference "
                                 "asked for (the upstream ignored a criterion); not deleted")
    return matches


def _reference_checks(ctx: Context, criteria: Criteria) -> list[tuple[str, Key]]:
    """(param, target) for every plain reference criterion with one literal ``Type/id`` value."""
    checks = []
    for name, value in criteria.params:
        target = parse_reference(value, ctx.client.base_url) if "," not in value else None
        if ":" not in name and target and ctx.profile.definitions.reference_paths(criteria.rtype, name):
            checks.append((name, target))
    return checks


def _references(ctx: Context, resource: dict[str, Any], param: str, target: Key) -> bool:
    paths = ctx.profile.definitions.reference_paths(resource["resourceType"], param) or ()
    return any(key == target for path in paths for key in references_at(resource, path, ctx.client.base_url))


async def _matching_now(ctx: Context, criteria: Criteria) -> set[Key] | None:
    """The matches that pass the reference check, searched now; None when the search failed."""
    found = await search_all(ctx, criteria.rtype, criteria.params)
    if found.problem:
        return None
    checks = _reference_checks(ctx, criteria)
    return {key for key, resource in found.matches.items()
            if all(_references(ctx, resource, param, target) for param, target in checks)}


def _still_matching(ctx: Context, searches: list[Criteria], found_by: dict[Key, int]) -> Recheck:
    """Changed matches are searched for again by id under the criteria that found them; one that
    cannot be searched for again is kept."""
    async def recheck(resources: list[dict[str, Any]]) -> set[Key]:
        groups: dict[int, list[str]] = defaultdict(list)
        for resource in resources:
            groups[found_by[(resource["resourceType"], resource["id"])]].append(resource["id"])
        still: set[Key] = set()
        for index, ids in groups.items():
            criteria = searches[index]
            still |= await _matching_now(ctx, Criteria(criteria.rtype, criteria.params + [("_id", ",".join(ids))])) or set()
        return still

    return recheck


async def delete_expunge(ctx: Context, searches: list[Criteria], dry_run: bool, confirmed: bool,
                         operation: str = "$delete-expunge", permanent: bool = True,
                         progress: Callable[[int, int], Awaitable[None]] | None = None,
                         before_delete: Callable[[Result, set[Key]], Awaitable[None]] | None = None,
                         removal: Result | None = None) -> Result:
    """Find every match, refuse an over-broad request, then delete, expunge and verify.
    ``permanent=False`` (Microsoft's soft ``$bulk-delete``): history is not promised away;
    ``before_delete`` runs once every match is known and before the first delete (e.g. removing
    references to the matches from kept resources); ``removal`` (see :func:`new_result`), when
    the caller passes one, is filled as the deletes go, so that a run stopped by ``progress`` (a
    cancelled job) still tells what it deleted."""
    ctx.require_hard_delete_possible()
    if removal is None:
        removal = new_result(searches, dry_run, operation, permanent)
    matches: dict[Key, dict[str, Any]] = {}
    found_by: dict[Key, int] = {}
    for index, criteria in enumerate(searches):
        if not criteria.params and not confirmed:
            raise Refused(422, "business-rule", f"{criteria.rtype} without criteria would delete every "
                          f"{criteria.rtype}; add {ctx.confirm_param}=true if that is meant; nothing was deleted",
                          expression=ctx.confirm_param)
        found = await find_matches(ctx, criteria, removal)
        matches.update(found)
        found_by.update(dict.fromkeys(found, index))
    if before_delete is not None and matches and not dry_run:
        check_confirmed(len(matches), ctx.max_without_confirm, confirmed, f"this {operation}",
                        ctx.confirm_param, ctx.dry_run_param)  # before the first write of any kind
        await before_delete(removal, set(matches))
    await remove(ctx, removal, order_resources(matches, ctx.client.base_url), confirmed,
                 versions_of(matches), _still_matching(ctx, searches, found_by), progress)
    if not dry_run and matches and removal.interruption is None:
        await _measure_remaining(ctx, searches, removal)
    return removal


def new_result(searches: list[Criteria], dry_run: bool, operation: str, permanent: bool) -> Result:
    """The empty result of one run over ``searches`` (named by parameter names, never values)."""
    return Result(operation, ", ".join(c.shown for c in searches), dry_run, permanent=permanent)


async def _measure_remaining(ctx: Context, searches: list[Criteria], removal: Result) -> None:
    """What still matches after the deletes, found by searching again: it remains."""
    left = set(removal.remaining)
    for criteria in searches:
        now = await _matching_now(ctx, criteria)
        if now is None:
            removal.errors.append(f"searching {criteria.shown} again after deleting failed: what "
                                  "still matches is not known")
        left |= now or set()
    removal.remaining = sorted(left)
