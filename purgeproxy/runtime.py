"""How a purgeproxy process runs Python: its event loop and its garbage collector's pace.

Both are process-wide, chosen once at start by every ``purgeproxy`` command (and by each
``serve`` worker, a fresh interpreter); the benchmark makes the same choices so that it measures
what operators run.
"""

from __future__ import annotations

import asyncio
import gc

# Container allocations between two collections of the youngest generation (Python's default:
# 700). A purge decodes search pages of up to 5,000 resources (~50,000 containers) and holds
# every member it found: at 700 the page still being checked is promoted by young collections,
# and the promotions keep triggering full collections over everything the purge holds. Measured
# on the Medplum engine, a 100,000-resource purge (the proxy's own CPU, three runs each): 14.4 to
# 15.8 s at 700 with 31 full collections, 11.9 to 12.3 s at 10,000 to 50,000 with 6 or 7; wall
# 33.9-36.2 s against 29.8-31.1 s. Cyclic garbage waits at most 10,000 allocations longer.
YOUNG_COLLECTION_EVERY = 10_000


def tune_gc() -> None:
    """Collect the youngest generation less often; the older generations keep their ratios."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, oldest)


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed: measured ~4-8 % less CPU per proxied request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
