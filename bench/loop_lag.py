"""Does a running purge block the proxy's event loop? p99 of three loads, idle and during a purge.

The purge scenario's isolation part (bench/purge.py) measures a cheap GET through the proxy
while a ``$purge`` runs through the same process; that GET also waits for the upstream, which the
purge keeps busy (the Medplum engine runs on one Node thread). This separates the two:

* ``GET /healthz`` on the proxy never reaches the upstream: its p99 during the purge is the
  proxy's own event loop (blocked loop -> long tail);
* the cheap GET through the proxy, and the same GET straight to the upstream, show what the
  upstream's queue adds.

Each loaded figure is taken while a fresh ``POST Patient/<id>/$purge`` of ``size`` resources
runs (a new patient is seeded before each). Run: ``python -m bench.loop_lag [--size N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.purge import Bench, Settings, patient_resources, write
from bench.targets import Processes


def _during_purge(bench: Bench, url: str, proxy_base: str, patient: str) -> tuple[LoadResult, float]:
    outcome: dict[str, tuple[float, int, str]] = {}
    thread = threading.Thread(target=lambda: outcome.update(r=bench.http_purge(proxy_base, patient)))
    thread.start()
    time.sleep(0.3)  # the purge is under way
    loaded = run_wrk(url, 10, 1.0)
    thread.join()
    return loaded, outcome["r"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_lag", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000, help="resources in each purged compartment")
    size = parser.parse_args(argv).size
    workdir = Path(tempfile.mkdtemp(prefix="purgeproxy-loop-lag-"))
    bench = Bench(Settings(isolation_size=size, wrk_seconds=2.0), workdir, print)
    with Processes(workdir) as procs, bench.served(procs, size) as (base, proxy_base, cheap, (_, resources)):
        loads = {"healthz (proxy loop only)": proxy_base.replace("/fhir", "/healthz"),
                 "GET through the proxy": cheap, "GET straight to the upstream": cheap.replace(proxy_base, base)}
        print(f"load average {os.getloadavg()[0]:.2f}")
        for name, url in loads.items():
            run_wrk(url, 10, 1.0)  # warm-up
            idle = run_wrk(url, 10, 2.0)
            loaded, wall = _during_purge(bench, url, proxy_base, resources[0]["id"])
            print(f"{name:30} p99 idle {idle.p99_ms:8.2f} ms, during a {size:,}-resource purge "
                  f"{loaded.p99_ms:8.2f} ms ({loaded.requests} requests in 1 s; purge {wall:.2f} s)")
            resources = patient_resources(bench.tag("again"), size)  # the next purge's patient
            write(base, resources)
        print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
