"""The ``purgeproxy`` command: one Typer app, one module per command group.

Each module in :data:`COMMANDS` has ``register(app)``, so adding a command is adding a module and a
line here; ``main`` keeps the old entry point's contract (an exit status, never a traceback for a
configuration mistake).
"""

from __future__ import annotations

import typer

from purgeproxy import __version__, runtime
from purgeproxy.cli import check_config, jobs, ledger, purge, reapply, receipt, serve

COMMANDS = [serve, check_config, purge, jobs, receipt, ledger, reapply]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"purgeproxy {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(name="purgeproxy", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      help="A reverse proxy in front of any FHIR server that makes patient erasure real.")

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="print the version and exit")) -> None:
        """purgeproxy: run the proxy, or talk to a running one."""

    for module in COMMANDS:
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the return value is the process's exit status (2 for usage and
    configuration mistakes, as click and ``serve`` already use it)."""
    runtime.tune_gc()
    try:
        build_app()(args=argv, prog_name="purgeproxy")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0
