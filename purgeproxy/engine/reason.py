"""The caller's ``reason`` for the erasure under way, for the upstreams whose own hard delete asks
for one (LinuxForHealth's ``$erase`` requires a ``reason``).

A context variable, set by the handler (or job) that starts the operation, so that the reason
reaches the kind's hard-delete call through the engine's tasks without every stage passing it on.
"""

from __future__ import annotations

from contextvars import ContextVar

ERASURE_REASON: ContextVar[str | None] = ContextVar("erasure_reason", default=None)
