"""Prometheus collectors, defined once. Labels: model, version, and where it matters the provider.

Queue time and compute time are kept apart (queue_seconds vs compute_seconds) so a slow model and
an overloaded server look different on a dashboard.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter(
    "deepserve_requests_total", "Inference requests answered, by outcome.", ["model", "version", "outcome"]
)
FAILURES = Counter(
    "deepserve_request_failures_total", "Inference requests that failed, by reason.", ["model", "version", "reason"]
)
REQUEST_LATENCY = Histogram(
    "deepserve_request_duration_seconds",
    "End-to-end inference latency: decode, queue, compute, encode.",
    ["model", "version"],
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
QUEUE_DEPTH = Gauge("deepserve_queue_depth", "Requests waiting in the batch queue.", ["model", "version"])
IN_FLIGHT = Gauge("deepserve_requests_in_flight", "Inference requests being served now.", ["model", "version"])
MODEL_LOAD_TIME = Histogram(
    "deepserve_model_load_duration_seconds",
    "Time to load a model version (session creation and warm-up).",
    ["model", "version", "provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MODEL_READY = Gauge(
    "deepserve_model_ready", "1 when the model version serves, else 0.", ["model", "version", "provider"]
)
