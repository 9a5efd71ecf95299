"""What every destructive operation runs with: the upstream, its profile, the settings.

Kept below both the purge and the vendor operations, so that either can use the other's pieces
(reverse reference searches, complete strict searches) without an import cycle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.observer import NO_OBSERVER, Observer
from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.fhir.references import Key
from purgeproxy.fhir.search import SearchFailed, search_pages
from purgeproxy.servers.base import ServerKind
from purgeproxy.servers.profile import UpstreamProfile


class Refused(OutcomeError):
    """The request cannot be carried out as asked; raised before any upstream write."""


AUDIT_TYPES = frozenset({"AuditEvent"})  # the audit trail: never a target, whatever the config says


def refuse_protected(rtype: str, excluded_types: frozenset[str] = frozenset()) -> None:
    """The one protected-target rule of every destructive operation: the audit trail, and the
    types ``purge.excluded_types`` keeps, are never what an operation deletes."""
    if rtype in AUDIT_TYPES:
        raise Refused(422, "business-rule", f"{rtype} is never a target of a destructive operation: "
                      "the audit trail is never erased; nothing was deleted")
    if rtype in excluded_types:
        raise Refused(422, "business-rule", f"{rtype} is an excluded type (purge.excluded_types) and is "
                      "never a target of a destructive operation; nothing was deleted")


def require_hard_delete_possible(hard_delete: str, kind: ServerKind) -> None:
    """``purge.hard_delete: require`` on an upstream without one: refuse before deleting."""
    if hard_delete == "require" and kind.hard_delete_method is None:
        raise Refused(422, "not-supported", f"hard_delete is 'require' but this upstream "
                      f"({kind.name}) offers no hard delete; nothing was deleted")


@dataclass(frozen=True)
class Context:
    """The upstream and the settings every operation runs with."""

    client: FhirClient
    profile: UpstreamProfile
    limit: asyncio.Semaphore
    batch_size: int
    page_size: int
    hard_delete: str  # require | auto | never (purge.hard_delete)
    excluded_types: frozenset[str] = frozenset()
    max_without_confirm: int | None = None  # larger deletes need the caller's confirm=true
    # how the caller's form spells its control parameters, for refusals that tell how to proceed
    confirm_param: str = "confirm"
    dry_run_param: str = "dryRun"
    observer: Observer = NO_OBSERVER  # told when each stage starts and ends (the benchmark's timing)
    hard_limit: asyncio.Semaphore | None = None  # instance hard deletes in flight (None: ``limit``)
    transactions: int = 1  # delete transactions in flight at once, where the plan shows them independent

    @property
    def hard_method(self) -> str | None:
        """The hard delete this run uses, None when deletes stay soft."""
        if self.hard_delete == "never":
            return None
        return self.profile.kind.hard_delete_method

    def require_hard_delete_possible(self) -> None:
        require_hard_delete_possible(self.hard_delete, self.profile.kind)

    def refuse_protected(self, rtype: str) -> None:
        refuse_protected(rtype, self.excluded_types)

    async def get(self, path: str, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None) -> Any:
        async with self.limit:
            return await self.client.request("GET", path, params=params, headers=headers)


@dataclass
class SearchResult:
    matches: dict[Key, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None  # the search could not be run: nothing it found is trusted


async def search_all(ctx: Context, rtype: str, params: list[tuple[str, str]]) -> SearchResult:
    """Every match of one strict search, all pages."""
    result = SearchResult()
    try:
        async for page in search_pages(ctx.client, ctx.limit, rtype, params, ctx.page_size):
            for resource in page:
                if resource.get("resourceType") == rtype and isinstance(resource.get("id"), str):
                    result.matches[(rtype, resource["id"])] = resource
    except SearchFailed as failure:
        result.problem = str(failure)
    return result
