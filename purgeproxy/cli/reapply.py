"""``purgeproxy reapply --config FILE --since DATE``: after a backup restore, run every erasure the
ledger recorded since DATE again against the upstream, as ``POST [base]/$reapply`` does.

The proxy's app is started without serving and without job workers (so this process runs no queued
job), and the same :func:`purgeproxy.receipts.reapply.reapply` runs: same engine, same stage, a
receipt for each re-run.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from aiohttp import web

from purgeproxy.app import create_app
from purgeproxy.config import Config, ConfigError, load_config
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.receipts.reapply import reapply, report_outcome
from purgeproxy.receipts.routes import parse_since

CONFIG_ERROR = 2
INCOMPLETE = 1


def config_or_exit(path: Path, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(path, overrides)
    except ConfigError as mistake:
        typer.echo(f"purgeproxy: config error: {mistake}", err=True)
        raise typer.Exit(CONFIG_ERROR) from None


def register(app: typer.Typer) -> None:
    app.command("reapply")(reapply_command)


async def _reapply(config: Config, since: str, dry_run: bool) -> tuple[bool, dict[str, Any]]:
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()  # the app's start-up: clients, receipts, the job store (no workers)
    try:
        report = await reapply(app, parse_since(since), f"cli:{getpass.getuser()}", dry_run)
    finally:
        await runner.cleanup()
    return report.complete, report_outcome(report)


def reapply_command(
    config: Annotated[Path, typer.Option("--config", help="YAML configuration file")],
    since: Annotated[str, typer.Option("--since", help="re-apply erasures recorded since this date(Time)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report what came back; delete nothing")] = False,
) -> None:
    """Re-apply erasures after a restore. Prints the OperationOutcome; exit status 0 when every
    re-run is complete, 1 when one is not, 2 for a configuration or usage mistake."""
    loaded = config_or_exit(config, {"jobs.workers": 0})
    try:
        complete, answer = asyncio.run(_reapply(loaded, since, dry_run))
    except OutcomeError as refused:
        typer.echo(f"purgeproxy: {refused.text}", err=True)
        raise typer.Exit(CONFIG_ERROR if refused.status == 400 else INCOMPLETE) from None
    typer.echo(json.dumps(answer, indent=2))
    for item in answer["issue"]:
        typer.echo(f"{item['severity']}: {item['diagnostics']}", err=True)
    if not complete:
        raise typer.Exit(INCOMPLETE)
