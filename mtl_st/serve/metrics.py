"""The server's Prometheus metrics (`GET /metrics`): requests, errors, latency, batch sizes, queue depth.

| metric | type | labels |
| --- | --- | --- |
| `mtl_requests_total` | counter | `route`, `status` |
| `mtl_request_errors_total` | counter | `route`, `error_type` |
| `mtl_request_duration_seconds` | histogram | `route` |
| `mtl_inputs_total` | counter | `route` (texts or pairs received) |
| `mtl_batch_size` | histogram | `kind` (inputs per model batch) |
| `mtl_batch_tokens` | histogram | `kind` |
| `mtl_batch_duration_seconds` | histogram | `kind` (time in the model) |
| `mtl_queue_wait_seconds` | histogram | `kind` (oldest input's wait before its batch ran) |
| `mtl_queue_depth` | gauge | inputs waiting or running |

Each app has its own registry. With several workers (`--workers N`) the values live in `PROMETHEUS_MULTIPROC_DIR`
(which `mtl-serve` sets) and every worker's `/metrics` reports the sum over the workers.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mtl_st.serve.batching import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
ROUTES = ("/", "/embed", "/predict", "/multitask", "/info", "/health", "/metrics")


def route_label(path: str) -> str:
    """A bounded label for a request path: the route's template, or `other`."""
    if path.startswith("/tasks/"):
        return "/tasks/{task}"
    if path.startswith("/demo"):
        return "/demo"
    return path if path in ROUTES else "other"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("mtl_requests", "HTTP requests answered", ["route", "status"], registry=registry)
        self.errors = Counter("mtl_request_errors", "Requests answered with an error", ["route", "error_type"],
                              registry=registry)
        self.latency = Histogram("mtl_request_duration_seconds", "Request latency, from arrival to the answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.inputs = Counter("mtl_inputs", "Texts (or pairs) received", ["route"], registry=registry)
        self.batch_size = Histogram("mtl_batch_size", "Inputs per model batch", ["kind"], buckets=SIZE_BUCKETS,
                                    registry=registry)
        self.batch_tokens = Histogram("mtl_batch_tokens", "Tokens per model batch", ["kind"], buckets=TOKEN_BUCKETS,
                                      registry=registry)
        self.batch_duration = Histogram("mtl_batch_duration_seconds", "Seconds a batch spent in the model", ["kind"],
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("mtl_queue_wait_seconds", "Wait of a batch's oldest input before the batch ran",
                                    ["kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("mtl_queue_depth", "Inputs waiting or running", registry=registry,
                                 multiprocess_mode="livesum")

    def observe_batch(self, stats: BatchStats) -> None:
        kind = str(stats.key[0]) if isinstance(stats.key, tuple) else str(stats.key)
        self.batch_size.labels(kind).observe(stats.size)
        self.batch_tokens.labels(kind).observe(stats.tokens)
        self.batch_duration.labels(kind).observe(stats.seconds)
        self.queue_wait.labels(kind).observe(stats.waited)

    def observe_request(self, route: str, status: int, seconds: float, error_type: str | None = None) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if error_type is not None:
            self.errors.labels(route, error_type).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (summed over the workers in multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


__all__ = ["Metrics", "CONTENT_TYPE", "route_label"]
