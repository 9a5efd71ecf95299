"""Planning: what a purge deletes, what it keeps and why, and in which order.

Policies (excluded types, resources shared with other patients) decide what is kept, except that
another patient's own Patient record is kept whatever the policy says. A purge that is one
patient's part of a many-patient purge (Group ``$purge``, ``$bulk-purge``) knows the cohort: a
resource whose other patients are all members of it is the cohort's data and goes (each member's
own purge deletes that member's Patient); one that also belongs to anyone outside it is shared
and kept as for a single purge. The order
puts every resource before the resources it references, and the Patient last, so that servers
that enforce referential integrity (HAPI) accept each batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Set
from dataclasses import dataclass, field

from purgeproxy.engine.compartment import Member, Resolution
from purgeproxy.fhir.references import Key


@dataclass(frozen=True)
class Policy:
    excluded_types: frozenset[str]
    delete_shared: bool
    cohort: frozenset[str] = frozenset()  # the other patients of the same many-patient purge

    def deletes_shared(self, others: Set[str]) -> bool:
        """Whether a resource also in ``others``' compartments goes: under ``purge.shared:
        delete``, or when every one of them is a member of this purge's cohort (the operator
        erases all of them; one patient outside it keeps it)."""
        return self.delete_shared or self.within_cohort(others)

    def within_cohort(self, others: Set[str]) -> bool:
        """Shared, but only with members of the cohort: deleted for that reason alone."""
        return bool(others) and others <= self.cohort


@dataclass
class Plan:
    patient_id: str
    order: list[Key]  # everything to delete, referencing resources first, the Patient last
    excluded: list[Key] = field(default_factory=list)
    shared: dict[Key, set[str]] = field(default_factory=dict)  # key -> the other patients
    other_records: dict[Key, frozenset[str]] = field(default_factory=dict)  # another Patient -> params
    ignored: dict[Key, set[str]] = field(default_factory=dict)
    unsearchable: dict[tuple[str, str], str] = field(default_factory=dict)
    outside_references: dict[Key, set[Key]] = field(default_factory=dict)  # kept -> deleted it references
    patient_exists: bool = False
    cohort: frozenset[str] = frozenset()  # the policy's cohort: which shared resources are the cohort's
    # other cohort members' data (deleted by their own purges) referencing what this one deletes
    cohort_references: dict[Key, set[Key]] = field(default_factory=dict)
    references: dict[Key, frozenset[Key]] = field(default_factory=dict)  # what each of ``order`` references

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(rtype for rtype, _ in self.order).items()))


def make_plan(resolution: Resolution, policy: Policy) -> Plan:
    kept: list[Member] = []
    doomed: dict[Key, Member] = {}
    plan = Plan(resolution.patient_id, [], ignored=dict(resolution.ignored),
                unsearchable=dict(resolution.unsearchable),
                patient_exists=resolution.patient is not None, cohort=policy.cohort)
    for key, member in sorted(resolution.members.items()):
        if key[0] in policy.excluded_types:
            plan.excluded.append(key)
            kept.append(member)
        elif key[0] == "Patient":  # another patient's own record: never, under any policy
            plan.other_records[key] = member.via
            kept.append(member)
        elif member.other_patients:
            plan.shared[key] = set(member.other_patients)
            if policy.deletes_shared(member.other_patients):
                doomed[key] = member
            else:
                kept.append(member)
        else:
            doomed[key] = member
    plan.order = delete_order(doomed)
    plan.references = {key: member.references for key, member in doomed.items()}
    if plan.patient_exists and resolution.patient_in_scope:
        plan.order.append(resolution.patient_key)
    gone = set(plan.order)
    for member in kept:
        hit = member.references & gone
        if hit:
            plan.outside_references[member.key] = set(hit)
    return plan


def delete_order(members: dict[Key, Member]) -> list[Key]:
    """Referencing resources before referenced ones (Kahn's algorithm), in layers sorted by key.

    A resource may go once everything that references it has gone. A layer holds what nothing
    left references, so no member of a layer references another: batches of one layer can be
    deleted side by side (``Deleter.transactions``). Taken one ready key at a time instead, a
    patient's Encounters fell among its Observations and most batches waited for the one before.
    In a reference cycle the member referenced by the fewest remaining resources goes first; the
    cycle's members end up next to each other, which usually puts them in the same transaction.
    """
    remaining: dict[Key, int] = {key: 0 for key in members}
    for member in members.values():
        for target in member.references:
            if target in remaining and target != member.key:
                remaining[target] += 1
    order: list[Key] = []
    layer = sorted(key for key, count in remaining.items() if count == 0)
    while remaining:
        if not layer:  # a cycle: break it where it is weakest
            layer = [min(remaining, key=lambda k: (remaining[k], k))]
        following: list[Key] = []
        for key in layer:
            del remaining[key]
            order.append(key)
            for target in members[key].references:
                if target in remaining and target != key:
                    remaining[target] -= 1
                    if remaining[target] == 0:
                        following.append(target)
        layer = sorted(following)
    return order


def by_type(keys: list[Key]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        grouped[rtype].append(rid)
    return dict(sorted(grouped.items()))
