"""``purgeproxy serve``: run the proxy in one process or in several sharing the port.

Configuration mistakes end the process with status 2 and one line on stderr naming the key, so an
operator reading a pod's log sees the cause, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from aiohttp import web

from purgeproxy import logs, metrics, runtime, serving
from purgeproxy.app import create_app
from purgeproxy.app_keys import PROFILE
from purgeproxy.config import Config, ConfigError, parse_config, read_document
from purgeproxy.config_warnings import config_warnings

CONFIG_ERROR = 2


def _run(config: Config, warnings: Sequence[str] = ()) -> None:
    """One serving process; with several workers each binds the same port with SO_REUSEPORT.

    Not ``web.run_app``: it cannot be given :class:`purgeproxy.serving.ProxyRunner`, whose
    connection handler answers the HTTP parser's errors without echoing the request."""
    logs.configure(config.logging.level, config.logging.format)
    logs.get_logger("purgeproxy").info(
        "starting",
        listen=f"{config.server.host}:{config.server.port}",
        base_path=config.server.base_path,
        pid=os.getpid(),
    )
    for warning in warnings:  # what check-config would warn about: names keys, never values
        logs.get_logger("purgeproxy").warning("config_warning", detail=warning)
    runtime.tune_gc()  # a spawned worker is a fresh interpreter
    loop = runtime.event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    app.cleanup_ctx.append(_announce_upstream)
    main = loop.create_task(serving.serve_forever(
        app, config.server.host, config.server.port, config.server.workers > 1))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    except ConfigError as mistake:  # found at start, e.g. a job store that cannot be opened
        report(mistake)
        raise SystemExit(CONFIG_ERROR) from None
    finally:  # the cancelled task's own clean-up stops the job workers and closes the clients
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _announce_upstream(app: web.Application) -> AsyncIterator[None]:
    """The upstream's kind, FHIR version and hard delete, detected and logged at start in the
    background: serving does not wait for an upstream that may still be starting."""
    task = asyncio.create_task(app[PROFILE].announce())
    yield
    task.cancel()


def serve(config: Config, warnings: Sequence[str] = ()) -> None:
    """Serve in this process, or in N worker processes that the kernel balances connections over.

    One Python process is CPU-bound at high concurrency; the kernel's SO_REUSEPORT spreads
    connections over several without a balancer in front. Port 0 cannot be shared, so it means
    one process.
    """
    if config.server.workers == 1 or config.server.port == 0:
        _run(config, warnings)
        return
    samples = metrics.prepare_multiprocess()  # before the workers start: they inherit it
    context = multiprocessing.get_context("spawn")  # fresh interpreters: prometheus_client sees it
    # the config's warnings once, from the first worker, not once per process
    workers = [context.Process(target=_run, args=(config, () if index else warnings), daemon=True)
               for index in range(config.server.workers)]
    for worker in workers:
        worker.start()
    signal.signal(signal.SIGTERM, lambda *_: _stop(workers))
    try:
        for worker in workers:
            worker.join()
            if worker.pid is not None:
                metrics.worker_exited(worker.pid)
    except KeyboardInterrupt:
        _stop(workers)
    finally:
        metrics.remove_multiprocess(samples)
    failed = [worker.exitcode for worker in workers if worker.exitcode]
    if failed:  # e.g. every worker found the job store unusable: the process says so too
        raise SystemExit(failed[0])


def _stop(workers: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join(10)
    raise SystemExit(0)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def report(mistake: ConfigError) -> None:
    """Every mistake, one line each, on stderr."""
    for problem in mistake.problems:
        print(f"purgeproxy: config error: {problem}", file=sys.stderr)


def serve_command(
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="PURGEPROXY_CONFIG", help="YAML configuration file; without it, the environment "
        "alone (PURGEPROXY_UPSTREAM=URL, PURGEPROXY_SECTION__KEY=value)")] = None,
    upstream: Annotated[str | None, typer.Option(help="upstream FHIR base URL (overrides upstream.url)")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (overrides server.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (overrides server.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="processes sharing the port (overrides server.workers)")] = None,
) -> None:
    """Run the proxy."""
    given = {"upstream.url": upstream, "server.host": host, "server.port": port, "server.workers": workers}
    try:
        raw = read_document(config) if config is not None else {}
        loaded = parse_config(raw, {key: value for key, value in given.items() if value is not None}, os.environ)
    except ConfigError as mistake:
        report(mistake)
        raise typer.Exit(CONFIG_ERROR) from None
    serve(loaded, config_warnings(raw, loaded))
