"""The ``purgeproxy`` command.

Configuration mistakes end the process with status 2 and one line on stderr naming the key, so an
operator reading a pod's log sees the cause, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from purgeproxy import logs
from purgeproxy.app import create_app
from purgeproxy.config import Config, ConfigError, load_config

CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purgeproxy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, type=Path, help="YAML configuration file")
    serve.add_argument("--upstream", help="upstream FHIR base URL (overrides upstream.url)")
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {"upstream.url": args.upstream, "server.host": args.host, "server.port": args.port}
    return {key: value for key, value in given.items() if value is not None}


def serve(config: Config) -> None:
    logs.configure(config.logging.level)
    logs.get_logger("purgeproxy").info(
        "starting",
        listen=f"{config.server.host}:{config.server.port}",
        base_path=config.server.base_path,
    )
    web.run_app(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        access_log=None,
        print=None,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as mistake:
        print(f"purgeproxy: config error: {mistake}", file=sys.stderr)
        return CONFIG_ERROR
    serve(config)
    return 0
