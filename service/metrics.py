"""Prometheus collectors, defined once. Labels: model, version, and where it matters the provider or route.

Queue time and compute time are kept apart (queue_seconds vs compute_seconds) so a slow model and
an overloaded server look different on a dashboard.

Label values are bounded: `model` and `version` only ever take the name and canonical version of a
model version the registry knows (a request for an unknown name or version is a 404 and not counted;
`01` and `1` are both counted as `1`), and `route` is one of `ROUTES`. `track` counts one request of
any route the same way: in flight, success or failure by reason, latency.
"""

from __future__ import annotations

import functools
import os
import time
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from service.errors import ModelNotReady, ServiceError
from service.settings import MULTIPROCESS_DIR

V2_INFER, V1_PREDICT, V1_EXPLAIN = "v2_infer", "v1_predict", "v1_explain"
ROUTES = (V2_INFER, V1_PREDICT, V1_EXPLAIN)
"""The values of the `route` label."""
_ROUTE_SET = frozenset(ROUTES)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter(
    "deepserve_requests_total", "Inference requests answered, by route and outcome.",
    ["model", "version", "route", "outcome"],
)
FAILURES = Counter(
    "deepserve_request_failures_total", "Inference requests that failed, by route and reason.",
    ["model", "version", "route", "reason"],
)
REQUEST_LATENCY = Histogram(
    "deepserve_request_duration_seconds",
    "End-to-end inference latency (decode, queue, compute, encode), by route.",
    ["model", "version", "route"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "deepserve_queue_duration_seconds",
    "Time a request waited in the batch queue.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_TIME = Histogram(
    "deepserve_compute_duration_seconds",
    "ONNX Runtime time per batch.",
    ["model", "version", "provider"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "deepserve_batch_size", "Items per executed batch.", ["model", "version"], buckets=_BATCH_BUCKETS
)
QUEUE_DEPTH = Gauge("deepserve_queue_depth", "Requests waiting in the batch queue.", ["model", "version"],
                    multiprocess_mode="livesum")
IN_FLIGHT = Gauge(
    "deepserve_requests_in_flight", "Inference requests being served now.", ["model", "version"],
    multiprocess_mode="livesum",
)
MODEL_LOAD_TIME = Histogram(
    "deepserve_model_load_duration_seconds",
    "Time to load a model version (session creation and warm-up).",
    ["model", "version", "provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_READY = Gauge(
    "deepserve_model_ready", "1 when the model version serves, else 0.", ["model", "version", "provider"],
    multiprocess_mode="livemin",  # with several worker processes: 1 only when every one serves it
)
CODEC_OFFLOADED = Counter(
    "deepserve_codec_offloaded_total",
    "v2 request bodies decoded (stage=decode) and answers "
    "encoded (stage=encode) in the codec worker processes.",
    ["stage"],
)


def exposition() -> bytes:
    """The Prometheus text of this process, or of every worker process in prometheus_client's
    multiprocess mode (`MULTIPROCESS_DIR` set before prometheus_client was imported: `deepserve serve`
    does it for several worker processes and for granian)."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_exiting() -> None:
    """A worker process's clean exit: its live gauges (in flight, queue depth, ready) stop counting."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _check_route(route: str) -> None:
    if route not in _ROUTE_SET:
        raise ValueError(f"route label '{route}' is not one of {ROUTES}")


class _Children:
    """The labelled series one (route, model, version) updates on every request, looked up once
    (`labels()` takes a lock and builds a key each time: ~10% of a small request's CPU)."""

    __slots__ = ("in_flight", "latency", "success")

    def __init__(self, route: str, model: str, version: str) -> None:
        self.in_flight = IN_FLIGHT.labels(model, version)
        self.success = REQUESTS.labels(model, version, route, "success")
        self.latency = REQUEST_LATENCY.labels(model, version, route)


@functools.cache
def _children(route: str, model: str, version: str) -> _Children:
    """Bounded like the label values: routes x model versions the registry has loaded."""
    _check_route(route)
    return _Children(route, model, version)


_in_flight = 0


def requests_in_flight() -> int:
    """Requests of every route and model between `track`'s enter and exit in this process, now."""
    return _in_flight


class track:  # noqa: N801  (used as `with metrics.track(...)`, like the function it replaced)
    """Count one request of a known model version: in flight meanwhile, then success, or failure by
    reason (the ServiceError's code, else `internal`), and its latency. A cancelled request (client gone)
    is timed but counted as neither."""

    __slots__ = ("_children", "_model", "_route", "_started", "_version")

    def __init__(self, route: str, model: str, version: str) -> None:
        self._children = _children(route, model, version)
        self._route, self._model, self._version = route, model, version
        self._started = 0.0

    def __enter__(self) -> None:
        global _in_flight
        _in_flight += 1
        self._children.in_flight.inc()
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        global _in_flight
        _in_flight -= 1
        children = self._children
        if kind is None:
            children.success.inc()
        elif isinstance(exc, Exception):
            reason = exc.code if isinstance(exc, ServiceError) else "internal"
            REQUESTS.labels(self._model, self._version, self._route, "failure").inc()
            FAILURES.labels(self._model, self._version, self._route, reason).inc()
        children.in_flight.dec()
        children.latency.observe(time.perf_counter() - self._started)


class track_lookup:  # noqa: N801  (a context manager, like `track`)
    """Around `registry.get(name, version)`: a known model that is not ready counts as a failure under
    its canonical version ('' for "latest"); unknown names and versions (404) are not counted, so a
    client cannot grow the label set."""

    __slots__ = ("_name", "_route", "_version")

    def __init__(self, route: str, name: str, version: str | None) -> None:
        _check_route(route)
        self._route, self._name, self._version = route, name, version

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(exc, ModelNotReady):
            label = "" if self._version is None else canonical_version(self._version)
            REQUESTS.labels(self._name, label, self._route, "failure").inc()
            FAILURES.labels(self._name, label, self._route, exc.code).inc()


def canonical_version(version: str) -> str:
    """`007` -> `7`, as the registry resolves it."""
    return str(int(version)) if version.isascii() and version.isdigit() else version
