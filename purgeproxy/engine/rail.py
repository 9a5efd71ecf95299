"""The confirmation rail (``purge.max_without_confirm``): one check for every destructive operation.

Checked after planning and before the first delete of the same run, so that a dry run always
shows the plan and nothing is deleted on a refused request.
"""

from __future__ import annotations

from purgeproxy.fhir.outcome import OutcomeError


class ConfirmationRequired(OutcomeError):
    """The operation would delete more than ``max_without_confirm`` resources; nothing was deleted.

    The text names the parameters exactly as the form the caller used spells them (``confirm``
    in ``$purge``'s query or Parameters, ``_confirm`` on a conditional DELETE): followed
    literally, it must work.
    """

    def __init__(self, planned: int, limit: int, what: str = "this purge", confirm: str = "confirm",
                 dry_run: str = "dryRun") -> None:
        super().__init__(422, "business-rule", f"{what} would delete {planned} resources, more than {limit} "
                         "without confirmation (purge.max_without_confirm): nothing was deleted; "
                         f"see the plan with {dry_run}=true, then repeat with {confirm}=true", expression=confirm)
        self.planned, self.limit = planned, limit


def check_confirmed(planned: int, limit: int | None, confirmed: bool, what: str = "this purge",
                    confirm: str = "confirm", dry_run: str = "dryRun") -> None:
    """Refuse ``planned`` deletes over ``limit`` (None: no rail) unless the caller confirmed."""
    if limit is not None and not confirmed and planned > limit:
        raise ConfirmationRequired(planned, limit, what, confirm, dry_run)
