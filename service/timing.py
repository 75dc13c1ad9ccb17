"""Where one request's time went: a small record the handler starts and the batcher fills in.

The handler calls `start()`, which puts a `RequestTiming` in a context variable; `DynamicBatcher.submit`
runs in the handler's task, so it finds the record and hands it to the worker with the job, which adds
the job's queue and compute time. `service.api.timing` writes it out as a `Server-Timing` header.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestTiming:
    """Seconds, from `time.monotonic()`; queue and compute add up over every batch job of the request."""

    started: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0
    """Time the request's jobs waited in a batcher queue."""
    compute_s: float = 0.0
    """Time the batches that carried the request's jobs took to compute (stack, run, split)."""

    def add_job(self, *, enqueued_at: float, started_at: float, finished_at: float) -> None:
        self.queue_s += max(0.0, started_at - enqueued_at)
        self.compute_s += max(0.0, finished_at - started_at)

    def total_s(self) -> float:
        return time.monotonic() - self.started


current: ContextVar[RequestTiming | None] = ContextVar("deepserve_request_timing", default=None)
"""The timing of the request being handled in this context, if its handler started one."""


def start() -> RequestTiming:
    """A new record for the current request, found by the batcher through `current`."""
    timing = RequestTiming()
    current.set(timing)
    return timing
