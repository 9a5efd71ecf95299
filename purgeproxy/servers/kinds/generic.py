"""Any FHIR server: plain DELETE, which FHIR defines as a soft delete; no hard delete."""

from __future__ import annotations

from typing import Any

from purgeproxy.servers.base import ServerKind


class Generic(ServerKind):
    name = "generic"
    detection_order = 1000  # what nothing else claimed

    def detects(self, capability: dict[str, Any]) -> bool:
        return True
