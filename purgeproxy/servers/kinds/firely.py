"""Firely Server: instance ``$erase`` (Scale and CMS editions, when the plugin is loaded)."""

from __future__ import annotations

from purgeproxy.servers.base import ServerKind


class Firely(ServerKind):
    name = "firely"
    hard_delete_method = "Firely $erase"
    software_names = ("firely", "vonk")
    requires_operation = "erase"
    instance_operation = "$erase"
