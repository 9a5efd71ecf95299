"""``purgeproxy ledger verify --config FILE``: walk the erasure ledger's hash chain in the job store
and check every receipt in it; a removed, altered or reordered entry is named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from purgeproxy.cli.reapply import config_or_exit
from purgeproxy.receipts.ledger import Verification
from purgeproxy.receipts.service import open_service

BROKEN = 1


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The erasure ledger in the job store.", no_args_is_help=True)
    group.command("verify")(verify_command)
    app.add_typer(group, name="ledger")


async def _verify(config_path: Path, head: tuple[int, str] | None) -> Verification:
    service = await open_service(config_or_exit(config_path))
    try:
        return await service.ledger.verify(service.jwks(), head)
    finally:
        await service.close()


def _head(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        typer.echo("purgeproxy: --expect-head is SEQ:HASH, as a previous verify printed it", err=True)
        raise typer.Exit(2)
    return int(seq), digest


def verify_command(
    config: Annotated[Path, typer.Option("--config", help="YAML configuration file")],
    expect_head: Annotated[str | None, typer.Option(
        "--expect-head", help="SEQ:HASH a previous verify printed: shows entries removed from the end")] = None,
) -> None:
    """Exit status 0: the chain is intact and every receipt verifies; 1: it is not (each problem
    printed); 2: configuration or usage mistake. Prints the head (keep it elsewhere: removing the
    newest entries leaves an intact, shorter chain that only an earlier head shows)."""
    found = asyncio.run(_verify(config, _head(expect_head)))
    start = f" (entries up to {found.starts_after} were removed by retention)" if found.starts_after else ""
    head = f"; head {found.head[0]}:{found.head[1]}" if found.head else ""
    if found.intact:
        typer.echo(f"INTACT: {found.entries} ledger entries, hash chain and receipts verified{start}{head}")
        return
    for problem in found.problems:
        typer.echo(f"BROKEN: {problem}")
    raise typer.Exit(BROKEN)
