"""One resource, permanently: Firely's ``$erase``, Medplum's and HAPI's ``$expunge``.

Instance level means the resource and every version of it (delete, then the upstream's hard
delete, then read and history read back). Version level means one version and all older ones,
which only an upstream that can remove single versions (HAPI) can do; elsewhere it is refused
before anything is written. HAPI-shaped instance ``$expunge`` (with its parameters) removes only
history (previous versions, or the remains of an already deleted resource), never the current one.
"""

from __future__ import annotations

import re
from typing import Any

from purgeproxy.engine.removal import Context, Refused, Result, history_left, remove
from purgeproxy.engine.verify import history_entries
from purgeproxy.fhir.client import GONE
from purgeproxy.fhir.references import Key
from purgeproxy.servers.expunge import (
    INSTANCE,
    VERSION,
    ExpungeOptions,
    has_native_expunge,
    native_expunge,
)

_VERSION_IN_URL = re.compile(r"/_history/([A-Za-z0-9\-.]{1,64})")


async def erase_resource(ctx: Context, key: Key, dry_run: bool, operation: str) -> Result:
    """The resource and all its versions: delete, hard delete, verify."""
    ctx.refuse_protected(key[0])
    ctx.require_hard_delete_possible()
    removal = Result(operation, f"{key[0]}/{key[1]}", dry_run)
    removal.redo = {"operation": operation, "target": removal.target}
    answer = await ctx.get(f"{key[0]}/{key[1]}")
    if answer.status in GONE:
        removal.notes.append(f"{key[0]}/{key[1]} is not current (answered {answer.status}); its "
                             "remaining history is removed if there is any")
    elif answer.status != 200:
        raise Refused(502, "exception", f"reading {key[0]}/{key[1]} answered {answer.status}")
    return await remove(ctx, removal, [key])


async def history_versions(ctx: Context, key: Key) -> list[tuple[str, bool]]:
    """(version id, is a deletion) newest first, from the whole instance history, every page;
    [] when there is none (404/410)."""
    versions: list[tuple[str, bool]] = []
    for entry in await history_entries(ctx.client, ctx.limit, key) or []:
        version = _version_of(entry)
        if version is not None:
            deleted = (entry.get("request") or {}).get("method") == "DELETE"
            versions.append((version, deleted))
    return versions


def _version_of(entry: dict[str, Any]) -> str | None:
    resource = entry.get("resource") or {}
    version = (resource.get("meta") or {}).get("versionId")
    if isinstance(version, str):
        return version
    for where in ((entry.get("request") or {}).get("url", ""), entry.get("fullUrl", ""),
                  (entry.get("response") or {}).get("location", "")):
        match = _VERSION_IN_URL.search(str(where))
        if match:
            return match.group(1)
    return None


async def erase_versions(ctx: Context, key: Key, version: str, dry_run: bool, operation: str) -> Result:
    """Version ``version`` and all older ones (Firely's version-level ``$erase``)."""
    ctx.refuse_protected(key[0])
    versions = await history_versions(ctx, key)
    ids = [v for v, _ in versions]
    if version not in ids:
        raise Refused(404, "not-found", f"{key[0]}/{key[1]} has no version {version} in its history")
    newest, newest_deleted = versions[0]
    if version == newest and not newest_deleted:
        return await erase_resource(ctx, key, dry_run, operation)  # the current one: everything goes
    if not has_native_expunge(ctx.profile.kind, VERSION):
        raise Refused(422, "not-supported", _no_versions(ctx, operation))
    older = ids[ids.index(version):]
    removal = Result(operation, f"{key[0]}/{key[1]}/_history/{version}", dry_run)
    removal.notes.append(f"versions {', '.join(older)} of {key[0]}/{key[1]} "
                         f"{'would be' if dry_run else 'are'} removed; newer versions stay")
    removal.hard_delete_method = ctx.profile.kind.hard_delete_method
    if dry_run:
        return removal
    await _expunge_versions(ctx, key, older, removal)
    return removal


async def expunge_version(ctx: Context, key: Key, version: str, dry_run: bool) -> Result:
    """HAPI's version-level ``$expunge``: one old version; the current one cannot go this way."""
    ctx.refuse_protected(key[0])
    versions = await history_versions(ctx, key)
    if version not in [v for v, _ in versions]:
        raise Refused(404, "not-found", f"{key[0]}/{key[1]} has no version {version} in its history")
    if versions[0] == (version, False):
        raise Refused(422, "business-rule", f"version {version} is the current version of {key[0]}/{key[1]}; "
                      "delete the resource first, or use $erase; nothing was deleted")
    if not has_native_expunge(ctx.profile.kind, VERSION):
        raise Refused(422, "not-supported", _no_versions(ctx, "$expunge"))
    removal = Result("$expunge", f"{key[0]}/{key[1]}/_history/{version}", dry_run)
    removal.hard_delete_method = ctx.profile.kind.hard_delete_method
    if not dry_run:
        await _expunge_versions(ctx, key, [version], removal)
    return removal


def _no_versions(ctx: Context, operation: str) -> str:
    return (f"{operation} of single versions is not supported on this upstream ({ctx.profile.kind.name}): "
            "it has no way to remove one version of a resource through its API; nothing was deleted")


async def _expunge_versions(ctx: Context, key: Key, versions: list[str], removal: Result) -> None:
    options = ExpungeOptions(previous_versions=True, given=True)
    count = 0
    for version in versions:
        async with ctx.limit:
            removed, error = await native_expunge(ctx.client, f"{key[0]}/{key[1]}/_history/{version}", options)
        if error:
            removal.errors.append(f"version {version}: {error}")
        count += removed or 0
    removal.expunged = count
    left = [v for v in versions if (await ctx.get(f"{key[0]}/{key[1]}/_history/{v}")).status not in GONE]
    if left:
        removal.errors.append(f"still readable after expunge: versions {', '.join(left)}")


async def expunge_instance_history(ctx: Context, key: Key, options: ExpungeOptions, dry_run: bool) -> Result:
    """HAPI-shaped instance ``$expunge``: remove history only, never the current version."""
    ctx.refuse_protected(key[0])
    removal = Result("$expunge", f"{key[0]}/{key[1]}", dry_run)
    versions = await history_versions(ctx, key)
    current_live = bool(versions) and not versions[0][1]
    removable = versions[1:] if current_live else versions
    if not options.previous_versions:
        removable = [] if current_live else removable
    if not options.deleted_resources and not current_live:
        removable = []
    removal.notes.append(f"{len(removable)} version(s) of {key[0]}/{key[1]} "
                         f"{'would be' if dry_run else 'to be'} expunged")
    if not removable:
        removal.expunged = 0
        return removal
    if not has_native_expunge(ctx.profile.kind, INSTANCE) or (current_live and not ctx.profile.kind.expunge_keeps_current):
        raise Refused(422, "not-supported", _why_not(ctx, key, len(removable), current_live))
    removal.hard_delete_method = ctx.profile.kind.hard_delete_method
    if dry_run:
        return removal
    async with ctx.limit:
        removal.expunged, error = await native_expunge(ctx.client, f"{key[0]}/{key[1]}", options)
    if error:
        removal.errors.append(error)
    await _verify_history(ctx, key, current_live, removal)
    return removal


def _why_not(ctx: Context, key: Key, count: int, current_live: bool) -> str:
    kind = ctx.profile.kind
    name = kind.name
    if current_live and has_native_expunge(kind, INSTANCE):
        return (f"this upstream's ({name}) $expunge always removes the current version too; expunging only the "
                f"{count} previous version(s) of {key[0]}/{key[1]} is not supported; nothing was deleted")
    return (f"this upstream ({name}) has no $expunge: {count} version(s) of {key[0]}/{key[1]} are in "
            "its history and cannot be removed through its API; nothing was deleted")


async def _verify_history(ctx: Context, key: Key, current_live: bool, removal: Result) -> None:
    after = await history_versions(ctx, key)
    expected = 1 if current_live else 0
    if len(after) > expected:
        removal.history_remaining = [key]
        removal.errors.append(f"{len(after) - expected} version(s) of {key[0]}/{key[1]} are still "
                              "in its history after $expunge")
    elif not current_live:
        left = await history_left(ctx, [key])
        removal.history_remaining = left
