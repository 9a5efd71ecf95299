"""What the kind tests share: a CapabilityStatement shaped like a vendor's."""

from __future__ import annotations

from typing import Any


def statement(software: str, *operations: str) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "software": {"name": software},
            "rest": [{"mode": "server", "operation": [{"name": o} for o in operations]}]}
