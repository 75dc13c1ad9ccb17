"""`Server-Timing` response headers: queue, compute and total time of a request, in milliseconds.

Any route that runs a model calls `start()` first (before reading the body, so `total` counts it)
and `timed(response, timing)` on what it answers, e.g. a FastAPI route (as /v1 predict does):

    async def explain(..., response: Response) -> ExplainResponse | Response:
        timing = start()
        result = await ...                      # the batcher adds queue and compute time
        timed(result if isinstance(result, Response) else response, timing)
        return result

A browser's developer tools show the three phases (https://www.w3.org/TR/server-timing/).
"""

from __future__ import annotations

from starlette.responses import Response

from service.timing import RequestTiming, start

__all__ = ["SERVER_TIMING", "server_timing", "start", "timed"]

SERVER_TIMING = "Server-Timing"


def server_timing(timing: RequestTiming) -> str:
    """`queue;dur=0.12, compute;dur=1.3, total;dur=2.05` (ms; queue and compute of its batch jobs)."""
    return (f"queue;dur={timing.queue_s * 1000:.3f}, compute;dur={timing.compute_s * 1000:.3f}, "
            f"total;dur={timing.total_s() * 1000:.3f}")


def timed(response: Response, timing: RequestTiming) -> None:
    """Set the `Server-Timing` header of `response` (FastAPI's injected one, or one the route returns)."""
    response.headers[SERVER_TIMING] = server_timing(timing)
