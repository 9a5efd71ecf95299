"""At most N destructive operations in flight per caller: one runaway script must not occupy
the upstream (or every slot of ``purge.concurrency``) for everybody else.

Synchronous operations are counted here, in this process; asynchronous jobs (queued and running,
on every replica) are counted in the job store. Each side checks the sum: a synchronous operation
is given the caller's active jobs, a new job the caller's free slots here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from purgeproxy.security.errors import Denied


class CallerLimits:
    def __init__(self, maximum: int, retry_after: int) -> None:
        self.maximum = maximum
        self.retry_after = retry_after
        self._running: Counter[str] = Counter()

    def free(self, caller: str) -> int:
        """Slots ``caller`` has left for jobs, after its synchronous operations in this process."""
        return self.maximum - self._running[caller]

    def caller_refusal(self) -> Denied:
        return Denied(429, f"this caller already runs or has queued {self.maximum} destructive "
                           "operation(s); retry later", code="throttled", retry_after=self.retry_after)

    def queue_refusal(self, limit: int) -> Denied:
        return Denied(429, f"{limit} jobs are already queued or running (jobs.max_queued); "
                           "retry later", code="throttled", retry_after=self.retry_after)

    @contextmanager
    def hold(self, caller: str, jobs: int = 0) -> Iterator[None]:
        """A slot for ``caller`` (who has ``jobs`` queued or running) while the block runs, or
        ``Denied`` 429 with Retry-After."""
        if self._running[caller] + jobs >= self.maximum:
            raise self.caller_refusal()
        self._running[caller] += 1
        try:
            yield
        finally:
            self._running[caller] -= 1
            if not self._running[caller]:
                del self._running[caller]
