"""Which OAuth scopes allow which destructive operation.

Defaults follow SMART v2's ``<context>/<type>.<operation>`` style and accept the vendor scopes that
callers of Kodjin and Firely already hold, so moving a client behind the proxy needs no new
grants. Wildcard scopes (``system/*.*``, ``system/*.cruds``) are deliberately not enough: a purge
is more than a delete, and an existing broad grant must not turn into one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FIRELY = "http://server.fire.ly/auth/scope"


def _smart(resource_type: str, operation: str) -> tuple[str, ...]:
    return (f"system/{resource_type}.{operation}", f"user/{resource_type}.{operation}")


DEFAULT_SCOPES: dict[str, tuple[str, ...]] = {
    "$purge": _smart("Patient", "$purge") + ("system/kodjin/$patient-purge", f"{FIRELY}/purge-operation"),
    "$erase": _smart("Patient", "$erase") + (f"{FIRELY}/erase-operation",),
    "$expunge": _smart("*", "$expunge"),
    "cascade-delete": _smart("*", "cascade-delete"),
    "$delete-expunge": _smart("*", "$delete-expunge"),
}


def required_scopes(operation: str, configured: Mapping[Any, Sequence[str]]) -> tuple[str, ...]:
    """The scopes of which a caller needs one: the configured list, else the default."""
    if operation in configured:
        return tuple(configured[operation])
    return DEFAULT_SCOPES.get(operation, _smart("*", operation))


PATIENT_CONTEXT = "patient/"


def is_patient_scope(scope: str) -> bool:
    """SMART's ``patient/…``: the grant covers the token's own patient only."""
    return scope.startswith(PATIENT_CONTEXT)


def own_patient(claims: Mapping[str, Any], held: frozenset[str], patient: str | None) -> bool:
    """Whether the scopes ``held`` (those the operation accepts) reach ``patient``.

    Any other scope reaches every patient; ``patient/`` scopes alone reach only the patient of
    the token's SMART ``patient`` claim (JWT or introspection answer), and only when the request
    names that patient. No claim, or no patient named: refused.
    """
    if not all(is_patient_scope(scope) for scope in held):
        return True
    context = claims.get("patient")
    return isinstance(context, str) and bool(context) and patient == context


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token carries: ``scope`` (RFC 8693/9068, space-separated) or ``scp`` (list)."""
    held: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            held.update(value.split())
        elif isinstance(value, list):
            held.update(v for v in value if isinstance(v, str))
    return frozenset(held)


def identity(claims: Mapping[str, Any], kind: str) -> str:
    """The caller's name for the audit log: subject and client, never the token."""
    subject = claims.get("sub") or claims.get("username")
    client = claims.get("client_id") or claims.get("azp")
    if subject and client and subject != client:
        return f"{kind}:{subject} (client {client})"
    return f"{kind}:{subject or client or 'unknown'}"
