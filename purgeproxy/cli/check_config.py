"""``purgeproxy check-config FILE``: every mistake in a configuration at once, before it is used.

It reads the file and the environment as ``serve`` would (``PURGEPROXY_…`` keys included), prints
one line per error and per warning, and exits 2 when there is an error (1 with ``--strict`` when
there are only warnings), so a CI step or an init container can refuse a bad file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from purgeproxy.config import ConfigError, parse_config, read_document
from purgeproxy.config_warnings import config_warnings, literal_secrets

CONFIG_ERROR = 2
WARNINGS_IN_STRICT_MODE = 1


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)


def check_config(
    file: Annotated[Path | None, typer.Argument(help="YAML configuration file; none: the environment alone")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="exit 1 when there are warnings")] = False,
) -> None:
    """Check a configuration: every error (exit 2) and every warning, one line each."""
    raw: Any = {}
    try:
        raw = read_document(file) if file is not None else {}
        config = parse_config(raw, None, os.environ)
    except ConfigError as mistake:
        for problem in mistake.problems:
            typer.echo(f"error: {problem}")
        for warning in literal_secrets(raw):  # a secret in the file is worth saying even now
            typer.echo(f"warning: {warning}")
        typer.echo(f"{len(mistake.problems)} error(s): the proxy would not start")
        raise typer.Exit(CONFIG_ERROR) from None
    warnings = config_warnings(raw, config)
    for warning in warnings:
        typer.echo(f"warning: {warning}")
    typer.echo(f"ok: upstream {config.upstream.url}, {len(warnings)} warning(s)")
    if warnings and strict:
        raise typer.Exit(WARNINGS_IN_STRICT_MODE)
