"""Python function calls per proxied request: the pass-through's per-request work, counted.

Throughput and latency on a shared 2-core machine move with the neighbours' load; the number of
Python calls the proxy makes per request does not, so it shows what a change to the
pass-through bought even when timings cannot. The proxy runs in this process under cProfile,
in front of the fixed-latency fake upstream (``delay`` 0), and wrk in its own process sends
``GET /fhir/Patient/example`` on 4 connections, on the event loop ``purgeproxy serve`` uses.

Run: ``python -m bench.calls [--log-level info]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bench.load import wrk_binary
from bench.targets import PATIENT_PATH, Processes, free_port, start_upstream
from purgeproxy.runtime import event_loop


@dataclass(frozen=True)
class CallCount:
    requests: int
    calls: int
    top: list[tuple[float, str]]  # (calls per request, function) of the most called

    @property
    def per_request(self) -> float:
        return self.calls / self.requests if self.requests else 0.0


async def _count(upstream_base: str, log_level: str, seconds: int) -> CallCount:
    from purgeproxy import logs
    from purgeproxy.app import create_app
    from purgeproxy.config import Config
    from purgeproxy.serving import ProxyRunner

    logs.configure(log_level)
    port = free_port()
    config = Config.model_validate({"upstream": {"url": upstream_base},
                                    "server": {"host": "127.0.0.1", "port": port},
                                    "logging": {"level": log_level}})
    runner = ProxyRunner(create_app(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/fhir{PATIENT_PATH}"
        await _wrk(url, 1)  # warm-up: connections, caches
        profile = cProfile.Profile()
        profile.enable()
        requests = await _wrk(url, seconds)
        profile.disable()
    finally:
        await runner.cleanup()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    calls = sum(row[1] for row in stats.values())
    top = sorted(((row[1] / max(requests, 1), f"{name} ({Path(file).name}:{line})")
                  for (file, line, name), row in stats.items()), reverse=True)[:15]
    return CallCount(requests, calls, top)


async def _wrk(url: str, seconds: int) -> int:
    wrk = await asyncio.create_subprocess_exec(
        wrk_binary(), "-t1", "-c4", f"-d{seconds}s", url, stdout=subprocess.PIPE)
    out = (await wrk.communicate())[0].decode()
    return int(out.split(" requests in", 1)[0].split()[-1])


def count(log_level: str = "warning", seconds: int = 3) -> CallCount:
    """Start the fake upstream, count the proxy's calls per request, stop the upstream."""
    with Processes(Path(tempfile.mkdtemp(prefix="purgeproxy-calls-"))) as procs:
        upstream = start_upstream(procs, delay=0.0)
        loop = event_loop()  # the loop `purgeproxy serve` runs on (uvloop where installed)
        try:
            return loop.run_until_complete(_count(upstream.base_url, log_level, seconds))
        finally:
            loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="warning", choices=["warning", "info"])
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args(argv)
    result = count(args.log_level, args.seconds)
    print(f"{result.requests} requests, {result.per_request:.0f} Python calls per request "
          f"(log level {args.log_level})")
    for per_request, name in result.top:
        print(f"{per_request:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
