"""Document bytes: the Binaries that hold the patient's documents, found, proven and deleted.

A DocumentReference, Media, DiagnosticReport.presentedForm or Communication payload points at
its bytes with an ``Attachment.url``; deleting the resource leaves the Binary readable. Two ways
lead to a Binary: an ``Attachment.url`` of a member the purge deletes (``all_references`` reads
them), and the ``Binary?_security-context`` search for the patient (only when the whole patient
goes, i.e. the compartment lists Patient). Every candidate is read and judged:

- its ``securityContext`` is the patient, a resource this purge deletes, or absent, and a member
  being deleted references it or the context is the patient: the patient's, deleted;
- its ``securityContext`` is another patient or a resource the purge keeps, or a kept member
  (shared, excluded) also references it: shared, kept unless ``purge.shared: delete``;
- ``purge.attachments: keep``: every Binary is kept and listed.

The search by securityContext is only believed where the upstream honours
``Prefer: handling=strict`` (it refuses an unknown parameter): the Medplum engine answers any
unknown Binary parameter with an empty Bundle, which would pass for "none". There, and where the
search is refused, the outcome says such Binaries may remain. A Binary that another patient's
resource references by ``Attachment.url`` alone cannot be found by any FHIR search; what the purge
read (the members it keeps) is checked, and the README says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.engine.compartment import Resolution
from purgeproxy.engine.verify import version_of
from purgeproxy.fhir.client import GONE, FhirClient
from purgeproxy.fhir.references import Key, parse_reference
from purgeproxy.fhir.search import STRICT, ResolutionError, SearchFailed, search_pages

PROBE = "purgeproxy-unknown-parameter"  # no server knows it: a strict one refuses it (HAPI lets
# unknown names starting with "_" pass even then)


@dataclass
class Attachments:
    """Binaries found for a purge and what happens to each."""

    delete: list[Key] = field(default_factory=list)  # proven the patient's
    versions: dict[Key, str | None] = field(default_factory=dict)  # each deleted one, as it was read
    contexts: dict[Key, Key] = field(default_factory=dict)  # deleted Binary -> the deleted resource
    # its securityContext names (a reference: it must go first where integrity is enforced)
    kept: dict[Key, str] = field(default_factory=dict)  # purge.attachments: keep
    shared: dict[Key, str] = field(default_factory=dict)  # also someone else's: why
    unreadable: dict[Key, str] = field(default_factory=dict)  # could not be read: not judged
    unsearched: str | None = None  # why Binaries by securityContext were not searched

    def merge(self, later: Attachments) -> None:
        """What a later round found joins the purge's report (and its read-back)."""
        self.delete += [key for key in later.delete if key not in self.delete]
        self.versions.update(later.versions)
        self.contexts.update(later.contexts)
        self.kept.update(later.kept)
        self.shared.update(later.shared)
        self.unreadable.update(later.unreadable)
        self.unsearched = self.unsearched or later.unsearched


@dataclass(frozen=True)
class AttachmentFinder:
    client: FhirClient
    limit: asyncio.Semaphore
    page_size: int
    keep: bool  # purge.attachments: keep
    delete_shared: bool  # purge.shared: delete

    async def find(self, resolution: Resolution, doomed: set[Key], values: list[str]) -> Attachments:
        """``doomed``: what the plan deletes; ``values``: the search values naming the patient."""
        result = Attachments()
        patient = resolution.patient_key
        referenced: dict[Key, set[Key]] = {}
        kept_refs: dict[Key, set[Key]] = {}
        for key, member in resolution.members.items():
            for target in member.references:
                if target[0] == "Binary":
                    (referenced if key in doomed else kept_refs).setdefault(target, set()).add(key)
        candidates = set(referenced)
        if resolution.patient_in_scope:
            candidates |= await self._by_security_context(values, result)
        bodies = await asyncio.gather(*(self._read(key, result) for key in sorted(candidates)))
        for key, body in zip(sorted(candidates), bodies, strict=True):
            if body is not None:
                self._judge(result, key, body, patient, doomed, key in referenced, kept_refs.get(key, set()))
        result.delete.sort()
        return result

    async def _by_security_context(self, values: list[str], result: Attachments) -> set[Key]:
        if not await self._strict_honoured():
            result.unsearched = ("the upstream does not refuse unknown Binary search parameters, so an "
                                 "empty answer to Binary?_security-context proves nothing")
            return set()
        found: set[Key] = set()
        try:
            for value in values:
                async for page in search_pages(self.client, self.limit, "Binary",
                                               [("_security-context", value)], self.page_size):
                    found |= {("Binary", r["id"]) for r in page
                              if r.get("resourceType") == "Binary" and isinstance(r.get("id"), str)}
        except (SearchFailed, ResolutionError) as failure:
            result.unsearched = f"Binary?_security-context: {failure}"
        return found

    async def _strict_honoured(self) -> bool:
        async with self.limit:
            answer = await self.client.request("GET", "Binary", params=[(PROBE, "1"), ("_count", "1")],
                                               headers=STRICT)
        return 400 <= answer.status < 500

    async def _read(self, key: Key, result: Attachments) -> dict[str, Any] | None:
        async with self.limit:
            answer = await self.client.request("GET", f"Binary/{key[1]}")
        if answer.status == 200 and answer.resource_type == "Binary" and answer.body.get("id") == key[1]:
            binary: dict[str, Any] = answer.body
            return binary
        if answer.status not in GONE:  # already gone is fine: nothing left to remove
            result.unreadable[key] = f"reading it answered {answer.status}"
        return None

    def _judge(self, result: Attachments, key: Key, body: dict[str, Any], patient: Key,
               doomed: set[Key], referenced: bool, kept_by: set[Key]) -> None:
        context = (body.get("securityContext") or {}).get("reference")
        owner = parse_reference(context, self.client.base_url) if isinstance(context, str) else None
        if not (referenced or owner == patient):
            return  # returned by the search, but not the patient's: the upstream ignored the parameter
        why = None
        if context is not None and owner != patient and owner not in doomed:
            why = f"its securityContext is {context}, which this purge does not delete"
        elif kept_by:
            why = "it is also the attachment of " + ", ".join(f"{t}/{i}" for t, i in sorted(kept_by)) + ", which is kept"
        if why is not None:
            result.shared[key] = why
            if not self.delete_shared or self.keep:
                return
        if self.keep:
            result.kept[key] = "purge.attachments is 'keep'"
            return
        result.delete.append(key)
        result.versions[key] = version_of(body)
        if owner in doomed and owner != patient:
            result.contexts[key] = owner
