"""The upstream kinds the proxy knows, by name, and detection from ``metadata``."""

from __future__ import annotations

from typing import Any

import purgeproxy.servers.kinds  # noqa: F401  (defining the kinds registers them)
from purgeproxy.servers.base import REGISTRY, ServerKind

KIND_NAMES = tuple(kind.name for kind in REGISTRY)


def kind_named(name: str) -> ServerKind:
    return next(kind for kind in REGISTRY if kind.name == name)


def detect(capability: Any) -> ServerKind:
    """The first kind that claims the CapabilityStatement; generic for anything else.

    A body that is not a CapabilityStatement (the bare Medplum engine answers a Bundle) is
    generic: set ``upstream.kind`` to say more.
    """
    if not (isinstance(capability, dict) and capability.get("resourceType") == "CapabilityStatement"):
        return kind_named("generic")
    return next(kind for kind in REGISTRY if kind.detects(capability))
