"""``purgeproxy receipt verify FILE``: check an erasure receipt's signature, and whether it covered
a given ``Type/id``, without trusting the proxy that issued it beyond its public keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from purgeproxy.receipts.receipt import Invalid, covers, find_token, verify

INVALID = 1
USAGE = 2


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Erasure receipts: verify a receipt and what it covered.", no_args_is_help=True)
    group.command("verify")(verify_command)
    app.add_typer(group, name="receipt")


def _jwks(keys: Path | None, proxy: str | None) -> dict[str, Any]:
    if (keys is None) == (proxy is None):
        typer.echo("purgeproxy: give exactly one of --keys JWKS or --proxy URL", err=True)
        raise typer.Exit(USAGE)
    try:
        if keys is not None:
            loaded: dict[str, Any] = json.loads(keys.read_text(encoding="utf-8"))
            return loaded
        answer = httpx.get(f"{str(proxy).rstrip('/')}/$receipt-keys", timeout=30)
        answer.raise_for_status()
        fetched: dict[str, Any] = answer.json()
        return fetched
    except (OSError, ValueError, httpx.HTTPError) as problem:
        typer.echo(f"purgeproxy: cannot read the keys: {problem}", err=True)
        raise typer.Exit(USAGE) from None


def verify_command(
    file: Annotated[Path, typer.Argument(help="the receipt: a compact JWS, or the operation's JSON answer")],
    keys: Annotated[Path | None, typer.Option("--keys", help="a JWKS file of the proxy's public keys")] = None,
    proxy: Annotated[str | None, typer.Option("--proxy", help="the proxy's FHIR base: its $receipt-keys")] = None,
    covered: Annotated[str | None, typer.Option("--covers", help="Type/id to look for in the manifest")] = None,
    salt: Annotated[str | None, typer.Option("--salt", help="the receipt's salt (given with it)")] = None,
) -> None:
    """Check the signature; with --covers and --salt, whether the receipt covered that resource.
    Exit status 0: valid (and covered); 1: invalid or not covered; 2: usage."""
    if (covered is None) != (salt is None):
        typer.echo("purgeproxy: --covers and --salt go together", err=True)
        raise typer.Exit(USAGE)
    jwks = _jwks(keys, proxy)
    try:
        payload = verify(find_token(file.read_text(encoding="utf-8")), jwks)
    except (Invalid, ValueError, OSError) as why:
        typer.echo(f"INVALID: {why}")
        raise typer.Exit(INVALID) from None
    manifest = payload.get("manifest", {})
    typer.echo(f"VALID: receipt {payload['jti']}: {payload.get('operation')} at {payload.get('time')} by "
               f"{payload.get('requester')}, verdict {payload.get('verdict')}, {manifest.get('count')} resource(s) "
               f"in the manifest, upstream {payload.get('upstream')}")
    if covered is not None and salt is not None:
        if not covers(payload, covered, salt):
            typer.echo(f"NOT COVERED: {covered} is not in this receipt's manifest (or the salt is wrong)")
            raise typer.Exit(INVALID)
        typer.echo(f"COVERED: {covered} is in this receipt's manifest")
