"""Microsoft's ``$bulk-delete``: every resource matching search criteria, at system or type level.

The request is decided in full before a job is stored (:func:`plan`): criteria are strict (a
parameter the upstream does not list for the type, or a result parameter, is refused rather than
ignored, since an ignored criterion widens the delete), ``excludedResourceTypes`` must name
resource types, and a system-level delete without criteria (every resource on the server) needs
``expunge.allow_everything`` and ``confirm=true``. The job then runs the ``$delete-expunge``
engine: every match found with a strict search, re-checked, deleted in the version read, verified.
Without ``_hardDelete`` the deletes are soft (the upstream keeps history), as Microsoft's are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from purgeproxy.engine.context import Context, Refused, refuse_protected
from purgeproxy.engine.delete_expunge import RESULT_PARAMS, Criteria, delete_expunge
from purgeproxy.engine.delete_expunge import new_result as empty_result
from purgeproxy.engine.references import find_referrers
from purgeproxy.engine.result import Result
from purgeproxy.engine.unreference import remove_references
from purgeproxy.fhir.references import Key
from purgeproxy.servers.profile import UpstreamProfile

OPERATION = "$bulk-delete"
FLAGS = ("_hardDelete", "hardDelete", "_purgeHistory", "_remove-references", "confirm")
CONTROL = frozenset({*FLAGS, "excludedResourceTypes"})
# Searchable on every resource type, whatever the CapabilityStatement lists per type.
COMMON = frozenset({"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"})


@dataclass(frozen=True)
class BulkDelete:
    types: list[str]  # the types searched (one, or every type the criteria apply to)
    criteria: list[tuple[str, str]]
    hard: bool
    confirmed: bool
    system: bool
    remove_references: bool = False  # kept resources referencing a match lose those references

    def to_json(self) -> dict[str, Any]:
        return {"types": self.types, "criteria": [list(p) for p in self.criteria], "hard": self.hard,
                "confirmed": self.confirmed, "system": self.system, "remove_references": self.remove_references}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BulkDelete:
        return cls(list(data["types"]), [(n, v) for n, v in data["criteria"]], bool(data["hard"]),
                   bool(data["confirmed"]), bool(data["system"]), bool(data.get("remove_references", False)))


def _flag(pairs: Sequence[tuple[str, str]], *names: str) -> bool:
    values = {value for name, value in pairs if name in names}
    for value in values:
        if value not in ("true", "false"):
            raise Refused(400, "invalid", f"{names[0]} must be 'true' or 'false'", expression=names[0])
    if len(values) > 1:
        raise Refused(400, "invalid", f"{' / '.join(names)} given with different values", expression=names[0])
    return values == {"true"}


def plan(profile: UpstreamProfile, rtype: str | None, pairs: Sequence[tuple[str, str]],
         excluded_types: frozenset[str], allow_everything: bool) -> BulkDelete:
    """The validated request, or the refusal; nothing has reached the upstream yet."""
    resource_types = profile.definitions.resource_types
    hard = _flag(pairs, "_hardDelete", "hardDelete")
    if _flag(pairs, "_purgeHistory") and not hard:
        raise Refused(422, "not-supported", "_purgeHistory without _hardDelete=true (old versions removed, "
                      "the current one kept) is not carried out: purgeproxy removes history together with "
                      "the resource; send _hardDelete=true; nothing was deleted", expression="_purgeHistory")
    remove_refs = _flag(pairs, "_remove-references")
    confirmed = _flag(pairs, "confirm")
    excluded = _excluded(pairs, resource_types)
    criteria = [(name, value) for name, value in pairs if name not in CONTROL]
    for name, value in criteria:
        if name.split(":")[0] in RESULT_PARAMS:
            raise Refused(400, "not-supported", f"'{name[:64]}' shapes search results and is not a criterion "
                          "of $bulk-delete", expression=name[:64])
        if not value:
            raise Refused(400, "invalid", f"criterion '{name[:64]}' has no value", expression=name[:64])
    if rtype is None and not criteria and not allow_everything:
        raise Refused(403, "forbidden", "a system-level $bulk-delete without criteria deletes every resource "
                      "on the server and is switched off (expunge.allow_everything: false); nothing was deleted")
    if not criteria and not confirmed:
        raise Refused(422, "business-rule", f"{rtype or 'a system-level $bulk-delete'} without criteria would delete "
                      "every resource it covers; add confirm=true if that is meant; nothing was deleted",
                      expression="confirm")
    if rtype is not None:
        if rtype in excluded:
            raise Refused(400, "invalid", f"excludedResourceTypes excludes {rtype}, the type named in the URL")
        _check_names(profile, rtype, criteria)
        return BulkDelete([rtype], criteria, hard, confirmed, False, remove_refs)
    types = [t for t in sorted(_listed_types(profile)) if t not in excluded and not _protected(t, excluded_types)
             and _applies(profile, t, criteria)]
    if not types:  # refused here, before a job is stored, rather than by the job
        raise Refused(400, "not-supported", "no resource type of this upstream (outside excludedResourceTypes "
                      f"and the protected types) takes the criteria {', '.join(sorted({n[:64] for n, _ in criteria}))}; "
                      "nothing was deleted")
    return BulkDelete(types, criteria, hard, confirmed, True, remove_refs)


def _excluded(pairs: Sequence[tuple[str, str]], resource_types: frozenset[str]) -> frozenset[str]:
    names = {part.strip() for name, value in pairs if name == "excludedResourceTypes" for part in value.split(",")}
    for part in sorted(names):
        if part not in resource_types:
            raise Refused(400, "invalid", f"excludedResourceTypes: '{part[:64]}' is not a resource type of this "
                          "server's FHIR version", expression="excludedResourceTypes")
    return frozenset(names)


def _base_name(name: str) -> str:
    """``subject:Patient.birthdate`` -> ``subject``: the parameter the upstream must know."""
    return name.split(":")[0].split(".")[0]


def _check_names(profile: UpstreamProfile, rtype: str, criteria: list[tuple[str, str]]) -> None:
    for name, _ in criteria:
        if not _known(profile, rtype, _base_name(name)):
            raise Refused(400, "not-supported", f"'{name[:64]}' is not a search parameter of {rtype} on this "
                          "upstream; an ignored criterion would widen the delete; nothing was deleted",
                          expression=name[:64])


def _known(profile: UpstreamProfile, rtype: str, name: str) -> bool:
    if name in COMMON:
        return True
    if profile.searchable is not None:
        return name in profile.searchable.get(rtype, frozenset())
    return profile.definitions.reference_paths(rtype, name) is not None


def _applies(profile: UpstreamProfile, rtype: str, criteria: list[tuple[str, str]]) -> bool:
    return all(_known(profile, rtype, _base_name(name)) for name, _ in criteria)


def _listed_types(profile: UpstreamProfile) -> frozenset[str]:
    known = profile.definitions.resource_types
    return known & frozenset(profile.searchable) if profile.searchable is not None else known


def _protected(rtype: str, excluded_types: frozenset[str]) -> bool:
    try:
        refuse_protected(rtype, excluded_types)
    except Refused:
        return True
    return False


def searches(request: BulkDelete) -> list[Criteria]:
    return [Criteria(rtype, list(request.criteria)) for rtype in request.types]


def new_result(request: BulkDelete) -> Result:
    """What :func:`run` fills as it goes (pass it in to know what was deleted if it is stopped)."""
    return empty_result(searches(request), False, OPERATION, request.hard)


async def run(ctx: Context, request: BulkDelete,
              progress: Callable[[int, int], Awaitable[None]] | None = None,
              removal: Result | None = None) -> Result:
    """The strict searches, re-checks, deletes and verification of ``$delete-expunge``; ``removal``
    (from :func:`new_result`) holds what was deleted even when ``progress`` stops the run."""

    async def unreference(removal: Result, matches: set[Key]) -> None:
        """Every resource that references a match (reverse searches) and is not one loses those
        references, its other content unchanged; each is reported (a note: the deletes' verdict
        is about the matches)."""
        found = await find_referrers(ctx, sorted(matches))
        holders = set(found.points_at) - matches
        for (rtype, rid), (_, text) in sorted((await remove_references(ctx, holders, matches, False)).items()):
            removal.notes.append(f"{rtype}/{rid}: {text}")

    return await delete_expunge(ctx, searches(request), False, request.confirmed, OPERATION, request.hard, progress,
                                unreference if request.remove_references else None, removal)


def deleted_counts(result: Result) -> dict[str, int]:
    """Resources deleted per type, measured (what the upstream confirmed and verification found gone)."""
    return dict(sorted(Counter(rtype for rtype, _ in result.deletion.deleted).items()))
