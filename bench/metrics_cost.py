"""What the metrics and correlation hooks add to each pass-through request, in microseconds.

The access log calls ``bind_request_id`` (the request id into the log context) and
``metrics.passthrough_answered`` (one histogram observation) once per request. Run it in one
process (``python -m bench.metrics_cost``) and as a ``serve --workers N`` worker does, with
samples in files (``PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) python -m bench.metrics_cost``).
"""

from __future__ import annotations

import os
import timeit


def main() -> None:
    import io
    import sys

    from purgeproxy import logs, metrics
    from purgeproxy.logs import bind_request_id

    sys.stderr = io.StringIO()  # the access-log line, for scale, rendered but not printed
    logs.configure("info")
    access = logs.get_logger("purgeproxy.access")

    rounds = 50_000
    cases = {
        "bind_request_id": lambda: bind_request_id("0123456789abcdef0123456789abcdef"),
        "passthrough_answered": lambda: metrics.passthrough_answered("GET", 200, 0.0042, 200),
        "(scale: access-log line)": lambda: access.info("request", method="GET", path="/fhir/Patient", status=200,
                                                        upstream_status=200, latency_ms=4.2),
    }
    mode = "multiprocess (files)" if os.environ.get(metrics.MULTIPROC_DIR) else "single process"
    for name, call in cases.items():
        call()  # the labelled child exists from the first request on
        best = min(timeit.repeat(call, number=rounds, repeat=5)) / rounds
        print(f"{mode:22} {name:26} {best * 1e6:6.2f} µs per request", file=sys.__stdout__)


if __name__ == "__main__":
    main()
