"""What every upstream kind answers for: the interface the engine asks, and nothing else.

One subclass per kind, one module each under ``servers/kinds``; a subclass registers itself by
being defined (``__init_subclass__``), so adding a kind is one module and its test. The engine
never compares kind names: it asks the kind object.
"""

from __future__ import annotations

import re
from abc import ABC
from typing import Any, ClassVar

from purgeproxy.fhir.client import GONE, FhirClient, FhirResponse
from purgeproxy.fhir.references import Key

SYSTEM, TYPE, INSTANCE, VERSION = "system", "type", "instance", "version"
ALL_LEVELS = frozenset({SYSTEM, TYPE, INSTANCE, VERSION})

# HAPI's wording, which other servers borrowed: "Unable to delete Patient/1 because at least one
# resource has a reference to this resource. First reference found was resource Observation/2 ..."
_CONFLICT = re.compile(
    r"delete\s+([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})\b.*?"
    r"resource\s+([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})\b",
    re.IGNORECASE | re.DOTALL,
)

REGISTRY: list[ServerKind] = []  # one instance per kind, in the order detection tries them


class ServerKind(ABC):
    """An upstream kind: how to recognise it and how it removes a deleted resource's history.

    ``hard_delete`` is called after the resource was deleted in a transaction; verification reads
    the history back afterwards, so a kind whose operation does less than it says is reported,
    not believed.
    """

    name: ClassVar[str]
    hard_delete_method: ClassVar[str | None] = None  # a description for outcomes; None: soft only
    expunge_levels: ClassVar[frozenset[str]] = frozenset()  # where its own $expunge exists
    expunge_keeps_current: ClassVar[bool] = False  # instance $expunge can spare the live version
    # its searches find versioned (Patient/1/_history/2) and absolute references on its own base
    # as Patient/1; otherwise the proxy searches for every form it counts (checked on real servers)
    normalises_references: ClassVar[bool] = False
    # its system ``_history`` takes a window as two ``_at`` values (``ge``, ``le``) and pages it by
    # ``_offset``: a listing of it can fix its end, so that changes written meanwhile do not push
    # the next page's entries down onto ones already listed
    history_window: ClassVar[bool] = False
    software_names: ClassVar[tuple[str, ...]] = ()  # any of these in software.name, lower case
    requires_operation: ClassVar[str | None] = None  # ... and the statement declares this one
    detection_order: ClassVar[int] = 50  # lower is tried first; the generic kind comes last

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY.append(cls())
        REGISTRY.sort(key=lambda kind: kind.detection_order)

    def detects(self, capability: dict[str, Any]) -> bool:
        """Whether a CapabilityStatement (already checked to be one) is this kind's.

        A server whose hard delete is a plug-in or a setting (HAPI's expunge, Firely's erase)
        only counts as that kind when it declares the operation: otherwise deletes stay soft.
        """
        name = str((capability.get("software") or {}).get("name", "")).lower()
        return any(known in name for known in self.software_names) and (
            self.requires_operation is None or declares(capability, self.requires_operation))

    instance_operation: ClassVar[str | None] = None  # e.g. "$expunge": POSTed to Type/id

    async def hard_delete(self, client: FhirClient, key: Key) -> str | None:
        """Remove a deleted resource's history; None on success, else why it failed.

        Most kinds do it with an instance operation (``instance_operation`` with
        ``operation_parameters``); a kind with another shape overrides this.
        """
        if self.hard_delete_method is None or self.instance_operation is None:
            return "this upstream offers no hard delete"
        operation = self.instance_operation
        answer = await client.request("POST", f"{key[0]}/{key[1]}/{operation}", json=self.operation_parameters(key))
        failure = _failure(answer, operation)
        if failure is not None or not 200 <= answer.status < 300:
            return failure
        return await self.removed_nothing(client, key, answer.body)

    async def removed_nothing(self, client: FhirClient, key: Key, body: Any) -> str | None:
        """Why a successful answer to the hard-delete operation left the resource's history in
        place (HAPI says it removed nothing with a count of 0), or None: the answer's status is
        all there is to trust. ``client`` lets a kind ask the upstream what its answer meant."""
        return None

    def operation_parameters(self, key: Key) -> dict[str, Any] | None:
        """The ``Parameters`` body of the hard-delete operation for ``key``; None: no body."""
        return None

    def conflict(self, body: Any) -> tuple[Key, Key] | None:
        """(blocked resource, resource referencing it) from a 409's OperationOutcome, if named."""
        if not isinstance(body, dict):
            return None
        for issue in body.get("issue", []):
            match = _CONFLICT.search(str(issue.get("diagnostics", "")))
            if match:
                (blocked_type, blocked_id), (blocker_type, blocker_id) = (m.split("/", 1) for m in match.groups())
                return (blocked_type, blocked_id), (blocker_type, blocker_id)
        return None

    def __repr__(self) -> str:
        return f"<server kind {self.name}>"


def declares(capability: dict[str, Any], operation: str) -> bool:
    """Whether the statement lists ``operation`` at system or any resource level."""
    for rest in capability.get("rest", []):
        names = {o.get("name") for o in rest.get("operation", [])}
        for resource in rest.get("resource", []):
            names |= {o.get("name") for o in resource.get("operation", [])}
        if operation in names:
            return True
    return False


async def call_ok(client: FhirClient, method: str, path: str, what: str, **kwargs: Any) -> str | None:
    """One hard-delete call: None when it worked (or the resource is already gone), else why not."""
    return _failure(await client.request(method, path, **kwargs), what)


def _failure(answer: FhirResponse, what: str) -> str | None:
    """None when a hard-delete call worked (or the resource is already gone), else why not."""
    if 200 <= answer.status < 300 or answer.status in GONE:
        return None
    return f"{what} answered {answer.status}"
