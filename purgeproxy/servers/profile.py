"""What the proxy knows about its upstream: kind, FHIR version, what it can search.

Learnt once from ``metadata`` (lazily, so the proxy starts while the upstream is still down) and
overridable in config where detection cannot be trusted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from purgeproxy.fhir.client import FhirClient, UpstreamError
from purgeproxy.fhir.definitions import FhirDefinitions, definitions_for, type_name_problem
from purgeproxy.logs import get_logger
from purgeproxy.servers.base import ServerKind
from purgeproxy.servers.registry import detect, kind_named

log = get_logger("purgeproxy.upstream")

DEFAULT_FHIR_VERSION = "4.0.1"


@dataclass(frozen=True)
class UpstreamProfile:
    kind: ServerKind
    definitions: FhirDefinitions
    searchable: dict[str, frozenset[str]] | None  # None: the upstream does not say
    normalised_references: bool = False  # its searches find versioned and absolute forms too


def searchable_pairs(capability: dict[str, Any]) -> dict[str, frozenset[str]] | None:
    """Resource type -> search params, when the statement lists search params at all."""
    listed: dict[str, frozenset[str]] = {}
    for rest in capability.get("rest", []):
        if rest.get("mode", "server") != "server":
            continue
        for resource in rest.get("resource", []):
            names = {p.get("name") for p in resource.get("searchParam", []) if p.get("name")}
            listed[resource.get("type", "")] = frozenset(names)
    return listed if any(listed.values()) else None


class ProfileMismatch(UpstreamError):
    """The configuration names something the upstream's FHIR version does not have."""


class ProfileCache:
    """Fetches the profile on first use and keeps it; concurrent first uses fetch once.

    ``type_names`` (config key -> resource type names) are checked against the upstream's FHIR
    version once it is known: while one is unknown there, every destructive operation (they all
    start here) is refused, before anything is deleted.
    """

    def __init__(self, client: FhirClient, kind: str, fhir_version: str,
                 type_names: Mapping[str, Iterable[str]] | None = None) -> None:
        self.client, self.kind, self.fhir_version = client, kind, fhir_version
        self.type_names = {key: tuple(names) for key, names in (type_names or {}).items()}
        self._profile: UpstreamProfile | None = None
        self._lock = asyncio.Lock()

    def known_version(self) -> str | None:
        """The upstream's FHIR version without asking it: learnt or configured, else None."""
        if self._profile is not None:
            return self._profile.definitions.fhir_version
        return None if self.fhir_version == "auto" else self.fhir_version

    async def get(self) -> UpstreamProfile:
        async with self._lock:
            if self._profile is None:
                self._profile = await self._learn()
            profile = self._profile
        self._check_type_names(profile.definitions)
        return profile

    def _check_type_names(self, definitions: FhirDefinitions) -> None:
        kind = f"resource type of FHIR {definitions.fhir_version}, the upstream's version"
        for key, names in sorted(self.type_names.items()):
            problem = type_name_problem(names, definitions.resource_types, kind)
            if problem:
                raise ProfileMismatch(422, "invalid", f"{key}: {problem}; correct the configuration; "
                                      "nothing was deleted")

    async def _learn(self) -> UpstreamProfile:
        answer = await self.client.capabilities()
        if answer.status != 200:
            raise UpstreamError(502, "transient", f"the upstream's metadata answered {answer.status}")
        document = answer.body if isinstance(answer.body, dict) else {}
        is_statement = document.get("resourceType") == "CapabilityStatement"
        kind = detect(document) if self.kind == "auto" else kind_named(self.kind)
        version = self.fhir_version
        if version == "auto":
            version = str(document.get("fhirVersion", DEFAULT_FHIR_VERSION)) if is_statement else DEFAULT_FHIR_VERSION
        try:
            definitions = definitions_for(version)
        except KeyError:
            raise UpstreamError(502, "not-supported", f"FHIR version {version} is not supported") from None
        log.info("upstream_detected", kind=kind.name, fhir_version=definitions.fhir_version,
                 hard_delete_method=kind.hard_delete_method, kind_configured=self.kind != "auto")
        return UpstreamProfile(kind, definitions, searchable_pairs(document) if is_statement else None,
                               kind.normalises_references)

    async def announce(self) -> None:
        """Learn the profile now, at start, so that the log says at once what the upstream was
        taken for; an upstream still down is tried again on first use."""
        try:
            await self.get()
        except UpstreamError as failure:
            log.warning("upstream_not_detected", status=failure.status, code=failure.code)
