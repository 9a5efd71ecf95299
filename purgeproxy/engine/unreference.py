"""``_remove-references`` (Microsoft's name): kept resources outside the scope that reference a
resource about to be deleted get that reference removed, as a new version of the kept resource
with its other content unchanged, instead of being left dangling or, on HAPI, blocking the delete.

Each holder is read now (so the write starts from its current content) and written back with
``If-Match`` on the version read; a reference is removed with its whole ``Reference`` element (an
item of a list, or the field holding it), and an element or list it leaves empty goes too (a
``Group.member`` whose ``entity`` was the reference; FHIR has no empty elements or arrays).
Protected types (AuditEvent, ``purge.excluded_types``) and other patients' own records are never
rewritten. What became of each holder is reported; an upstream that refuses the new
version (a required reference, a profile) leaves the holder as it was, and says so.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from purgeproxy.engine.context import Context, Refused
from purgeproxy.engine.verify import version_of
from purgeproxy.fhir.client import UpstreamError
from purgeproxy.fhir.references import Key, parse_reference


def strip_references(node: Any, doomed: set[Key], base_url: str) -> tuple[Any, list[Key]]:
    """``node`` without its Reference elements that point at ``doomed``; and what they pointed at."""
    removed: list[Key] = []

    def target(value: Any) -> Key | None:
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            key = parse_reference(value["reference"], base_url)
            return key if key in doomed else None
        return None

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            kept = {}
            for name, child in value.items():
                hit = target(child)
                if hit is not None:
                    removed.append(hit)
                    continue
                walked = walk(child)
                if walked not in ([], {}) or child in ([], {}):  # emptied by a removal: goes too
                    kept[name] = walked
            return kept
        if isinstance(value, list):
            items = []
            for child in value:
                hit = target(child)
                if hit is not None:
                    removed.append(hit)
                elif (walked := walk(child)) not in ([], {}) or child in ([], {}):
                    items.append(walked)
            return items
        return value

    return walk(copy.deepcopy(node)), removed


async def remove_references(ctx: Context, holders: set[Key], doomed: set[Key],
                            dry_run: bool) -> dict[Key, tuple[bool, str]]:
    """For each holder: (references removed, what happened), measured from the upstream's answers."""
    report: dict[Key, tuple[bool, str]] = {}

    async def one(key: Key) -> None:
        try:
            ctx.refuse_protected(key[0])
        except Refused:
            report[key] = (False, "a protected type: never rewritten; its reference stays")
            return
        try:
            report[key] = await _rewrite(ctx, key, doomed, dry_run)
        except UpstreamError as failure:
            report[key] = (False, f"the upstream failed ({failure.text}); its reference stays")

    await asyncio.gather(*(one(key) for key in sorted(holders) if key[0] != "Patient"))
    for key in holders:
        if key[0] == "Patient":
            report[key] = (False, "another patient's own record: never rewritten; its reference stays")
    return report


async def _rewrite(ctx: Context, key: Key, doomed: set[Key], dry_run: bool) -> tuple[bool, str]:
    path = f"{key[0]}/{key[1]}"
    answer = await ctx.get(path, headers={"Cache-Control": "no-cache"})
    if answer.status != 200 or answer.resource_type != key[0]:
        return False, f"reading it answered {answer.status}; its reference stays"
    body, removed = strip_references(answer.body, doomed, ctx.client.base_url)
    targets = ", ".join(sorted({f"{t}/{i}" for t, i in removed}))
    if not removed:
        return False, "no longer references anything deleted"
    if dry_run:
        return True, f"reference(s) to {targets} would be removed"
    version = version_of(answer.body)
    headers = {"If-Match": f'W/"{version}"'} if version else {}
    async with ctx.limit:
        written = await ctx.client.request("PUT", path, json=body, headers=headers)
    if written.status in (200, 201):
        return True, f"reference(s) to {targets} removed (new version {version_of(written.body) or 'unknown'})"
    return False, f"removing reference(s) to {targets} was refused ({written.status}); its reference stays"
