"""The one stage every destructive operation's result passes through before it is answered: the
receipt (signed, chained into the ledger) and then the audit (log line, optional AuditEvent that
cites the receipt). The purge, its asynchronous jobs, the vendor operations and re-applying all
call :func:`conclude`, so that none of them can answer without a receipt.
"""

from __future__ import annotations

from aiohttp import web

from purgeproxy import audit
from purgeproxy.app_keys import CONFIG, FHIR_CLIENT, RECEIPTS, UPSTREAM_LIMIT
from purgeproxy.engine.report import verdict
from purgeproxy.engine.result import Result
from purgeproxy.logs import get_logger
from purgeproxy.receipts.receipt import deleted_something

log = get_logger("purgeproxy.receipts")


async def conclude(app: web.Application, caller: str, result: Result, reason: str | None = None) -> None:
    """Receipt, then audit. A receipt that cannot be issued is said in the answer (a note: the
    erasure itself is as the result says) and logged; it never hides what was deleted."""
    service = app.get(RECEIPTS)
    if service is not None and deleted_something(result):
        try:
            result.receipt = await service.issue(result, caller, reason, str(verdict(result)["code"]))
        except Exception as failure:  # noqa: BLE001 - the store's errors differ per backend
            log.error("receipt_failed", operation=result.operation, error=type(failure).__name__)
            result.notes.append(f"no erasure receipt could be issued ({type(failure).__name__}); "
                                "the operation's result is as reported here")
    config = app[CONFIG]
    await audit.audit_result(result, caller, app[FHIR_CLIENT], app[UPSTREAM_LIMIT], config.purge.audit_event)
