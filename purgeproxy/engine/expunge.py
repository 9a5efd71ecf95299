"""Type- and system-level ``$expunge`` (HAPI's shape): translated to the upstream's own.

Only an upstream with its own type/system ``$expunge`` can do this: soft-deleted resources can be
listed through ``_history`` on some servers, but no FHIR interaction removes them, so elsewhere the
request is refused with ``not-supported``. ``expungeEverything`` empties the whole server and is
refused unless ``expunge.allow_everything`` is switched on.
"""

from __future__ import annotations

from purgeproxy.engine.removal import Context, Refused, Result
from purgeproxy.fhir.history import EVER
from purgeproxy.fhir.search import has_next
from purgeproxy.servers.expunge import (
    SYSTEM,
    TYPE,
    ExpungeOptions,
    has_native_expunge,
    native_expunge,
)


def check_bulk(ctx: Context, rtype: str | None, options: ExpungeOptions, allow_everything: bool) -> None:
    """Everything that refuses a type/system ``$expunge`` before it reaches the upstream."""
    level = SYSTEM if rtype is None else TYPE
    where = "[base]/$expunge" if rtype is None else f"{rtype}/$expunge"
    if rtype is not None:
        ctx.refuse_protected(rtype)
    if options.everything and rtype is not None:
        raise Refused(400, "invalid", "expungeEverything is only valid at system level")
    if options.everything and not allow_everything:
        raise Refused(403, "forbidden", "expungeEverything would empty the whole server and is switched "
                      "off (expunge.allow_everything: false); nothing was deleted")
    if not options.selects_anything:
        raise Refused(400, "required", "nothing to expunge: set expungeDeletedResources, "
                      "expungePreviousVersions or (system level) expungeEverything")
    if not has_native_expunge(ctx.profile.kind, level):
        raise Refused(422, "not-supported", f"{where} is not supported on this upstream "
                      f"({ctx.profile.kind.name}): it has no {level}-level $expunge, and no FHIR "
                      "interaction removes deleted resources or old versions; nothing was deleted")


async def expunge_bulk(ctx: Context, rtype: str | None, options: ExpungeOptions, dry_run: bool,
                       allow_everything: bool) -> Result:
    """Call the upstream's type/system ``$expunge`` and check what its history shows afterwards."""
    check_bulk(ctx, rtype, options, allow_everything)
    removal = Result("$expunge", rtype or "(system)", dry_run)
    removal.hard_delete_method = ctx.profile.kind.hard_delete_method
    if dry_run:
        removal.notes.append(f"would call the upstream's $expunge on {rtype or 'the whole server'}; "
                             "nothing was sent")
        return removal
    async with ctx.limit:
        removal.expunged, error = await native_expunge(ctx.client, rtype or "", options)
    if error:
        removal.errors.append(error)
    elif options.limit is None:
        await _verify(ctx, rtype, options, removal)
    else:
        removal.notes.append(f"limit {options.limit}: more may remain, run it again to continue")
    return removal


async def _verify(ctx: Context, rtype: str | None, options: ExpungeOptions, removal: Result) -> None:
    """Deleted resources must be gone from the type's (or server's) history afterwards."""
    if not (options.deleted_resources or options.everything):
        return
    answer = await ctx.get(f"{rtype}/_history" if rtype else "_history", params={"_count": "100", "_since": EVER})
    if answer.status != 200 or answer.resource_type != "Bundle":
        removal.notes.append(f"history could not be read back to verify (answered {answer.status})")
        return
    entries = answer.body.get("entry") or []
    left = [e for e in entries if options.everything or (e.get("request") or {}).get("method") == "DELETE"]
    if left:
        removal.errors.append(f"{len(left)} deleted resource(s) are still in the history after $expunge")
    elif has_next(answer.body):  # one page read: what it says is all it proves
        removal.notes.append(f"verified on the newest {len(entries)} changes of the history only: none is a "
                             "deleted resource; older changes were not read back")
    else:
        removal.notes.append("verified: the history lists no deleted resources any more")
