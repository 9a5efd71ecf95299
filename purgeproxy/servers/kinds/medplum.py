"""Medplum: instance ``$expunge`` only, and it always removes the whole resource with its history."""

from __future__ import annotations

from purgeproxy.servers.base import INSTANCE, ServerKind


class Medplum(ServerKind):
    name = "medplum"
    hard_delete_method = "Medplum $expunge"
    software_names = ("medplum",)
    instance_operation = "$expunge"
    expunge_levels = frozenset({INSTANCE})
