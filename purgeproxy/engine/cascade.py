"""Cascading delete (HAPI's ``_cascade=delete``): a resource and everything that references it.

Everything is found before anything is deleted: round 1 finds the resources that reference the
target, round 2 those that reference round 1's, and so on up to ``max_rounds``. If the last round
still finds referencing resources the cascade is refused and nothing is deleted, because deleting
part of a chain leaves dangling references (or, on HAPI, fails half-way). Excluded types
(``purge.excluded_types``, AuditEvent and Provenance by default) are never deleted: they are
reported as kept, and on an upstream with referential integrity they block what they reference.

A cascade must not silently spread to other patients: another Patient record, or a resource in
the compartment of a patient the target does not belong to (judged with the purge's own
``patients_of``, the server's full Patient compartment), is named in the plan and the cascade is
refused, nothing deleted, unless the caller confirms with ``_confirm=true``.
Every resource is deleted in the version the search returned; one changed since is deleted only
if it still references the target or another resource of the cascade.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from purgeproxy.engine.compartment import patients_of
from purgeproxy.engine.references import find_referrers, references_among
from purgeproxy.engine.removal import Context, Recheck, Refused, Result, order_resources, remove, versions_of
from purgeproxy.fhir.client import GONE, UpstreamError
from purgeproxy.fhir.references import Key


@dataclass
class CascadePlan:
    target: Key
    resources: dict[Key, dict[str, Any]] = field(default_factory=dict)  # to delete
    kept: dict[Key, str] = field(default_factory=dict)
    ignored: dict[Key, str] = field(default_factory=dict)
    unsearchable: dict[str, str] = field(default_factory=dict)
    rounds: int = 0


async def plan_cascade(ctx: Context, target: Key, max_rounds: int) -> CascadePlan:
    """The target and every resource that references it, transitively; refused past max_rounds."""
    plan = CascadePlan(target)
    answer = await ctx.get(f"{target[0]}/{target[1]}")
    if answer.status == 200 and answer.resource_type == target[0]:
        plan.resources[target] = answer.body
    elif answer.status not in GONE:  # unknown state: never cascade from a guess
        raise UpstreamError(502, "exception", f"reading {target[0]}/{target[1]} answered {answer.status}; "
                            "nothing was deleted")
    frontier = [target]
    while frontier:
        found = await find_referrers(ctx, frontier)
        plan.unsearchable.update(found.unsearchable)
        plan.ignored.update({k: v for k, v in found.ignored.items() if k not in plan.resources})
        new = {k: v for k, v in found.found.items() if k not in plan.resources and k not in plan.kept}
        if new and plan.rounds >= max_rounds:
            raise Refused(422, "too-costly", _too_deep(target, max_rounds, new, found.points_at))
        plan.rounds += 1 if new else 0
        frontier = []
        for key, resource in sorted(new.items()):
            if key[0] in ctx.excluded_types:
                plan.kept[key] = f"excluded type; references {_refs(found.points_at[key])}"
            else:
                plan.resources[key] = resource
                frontier.append(key)
    return plan


def other_patients_reached(ctx: Context, plan: CascadePlan) -> dict[Key, str]:
    """What the cascade would delete that belongs to a patient the target does not belong to.

    The target's patients: itself when it is a Patient, otherwise the patients whose compartment
    holds it. Another Patient record always counts.
    """
    definitions, base = ctx.profile.definitions, ctx.client.base_url
    target, body = plan.target, plan.resources.get(plan.target)
    if target[0] == "Patient":
        owners = frozenset({target[1]})
    else:
        owners = patients_of(body, definitions, base) if body else frozenset()
    reached: dict[Key, str] = {}
    for key, resource in sorted(plan.resources.items()):
        others = patients_of(resource, definitions, base) - owners
        if key == target or not others:
            continue
        reached[key] = ("another patient's own record" if key[0] == "Patient" else
                        f"also in the compartment of {_refs({('Patient', p) for p in others})}")
    return reached


def _listing(reached: dict[Key, str]) -> str:
    shown = sorted(reached)[:20]
    more = f" and {len(reached) - len(shown)} more" if len(reached) > len(shown) else ""
    return "; ".join(f"{t}/{i} ({reached[(t, i)]})" for t, i in shown) + more


def _refs(keys: set[Key]) -> str:
    return ", ".join(f"{t}/{i}" for t, i in sorted(keys))


def _too_deep(target: Key, max_rounds: int, new: dict[Key, Any], points_at: dict[Key, set[Key]]) -> str:
    shown = sorted(new)[:20]
    listing = "; ".join(f"{t}/{i} references {_refs(points_at[(t, i)])}" for t, i in shown)
    more = f" and {len(new) - len(shown)} more" if len(new) > len(shown) else ""
    return (f"cascading delete of {target[0]}/{target[1]} stopped: references remain after "
            f"{max_rounds} round(s) (cascade.max_rounds); nothing was deleted. Still referencing: "
            f"{listing}{more}")


async def cascade_delete(ctx: Context, target: Key, max_rounds: int, dry_run: bool,
                         hard: bool, confirmed: bool = False) -> Result:
    """Plan, then delete referencing resources first and the target last, then verify."""
    plan = await plan_cascade(ctx, target, max_rounds)
    removal = Result("cascade-delete", f"{target[0]}/{target[1]}", dry_run, permanent=hard)
    removal.redo = {"operation": "cascade-delete", "target": removal.target, "hard": hard}
    removal.kept = {**plan.kept, **plan.ignored}
    removal.notes.append(f"{len(plan.resources)} resource(s) found in {plan.rounds} round(s) of "
                         "reverse reference searches")
    if plan.unsearchable:
        removal.errors += [f"could not search {where}: {why}; resources referencing through it "
                           "may remain" for where, why in sorted(plan.unsearchable.items())]
    if target not in plan.resources:
        removal.notes.append(f"{target[0]}/{target[1]} does not exist (or is already deleted)")
    reached = other_patients_reached(ctx, plan)
    if reached:
        listing = _listing(reached)
        if not (dry_run or confirmed):
            raise Refused(422, "business-rule", f"cascading delete of {target[0]}/{target[1]} would reach "
                          f"other patients: {listing}; nothing was deleted; see the plan with _dryRun=true, "
                          "then repeat with _confirm=true to delete them too")
        removal.notes.append(f"{'needs _confirm=true: ' if dry_run else 'confirmed (_confirm=true): '}"
                             f"this cascade reaches other patients: {listing}")
    order = order_resources(plan.resources, ctx.client.base_url)
    return await remove(ctx if hard else replace(ctx, hard_delete="never"), removal, order, confirmed,
                        versions_of(plan.resources), _still_referencing(ctx, plan))


def _still_referencing(ctx: Context, plan: CascadePlan) -> Recheck:
    """The target is named, so always in scope; any other resource only while it references it or
    another resource of the cascade."""
    scope = set(plan.resources) | {plan.target}

    async def recheck(resources: list[dict[str, Any]]) -> set[Key]:
        keys = {(r["resourceType"], r["id"]): r for r in resources}
        return {key for key, body in keys.items() if key == plan.target or references_among(ctx, body, scope - {key})}

    return recheck
