"""Prometheus metrics of one server, per model and version: requests, latency, queue depth, batch sizes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics", "VersionMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATES = ("loading", "ready", "failed", "unloaded")
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class VersionMetrics:
    """The children of every metric for one model version (label lookups done once, not per request)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.model, self.version = model, version
        self.latency = metrics.latency.labels(model, version)
        self.queue = metrics.queue.labels(model, version)
        self.batch = metrics.batch.labels(model, version)
        self._requests: dict[int, Counter] = {}

    def request(self, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = self._metrics.requests.labels(self.model, self.version, str(status))
        child.inc()
        self.latency.observe(seconds)

    def state(self, state: str) -> None:
        """Mark the version's state (one of loading, ready, failed, unloaded) as the only one set."""
        for each in _STATES:
            self._metrics.states.labels(self.model, self.version, each).set(1.0 if each == state else 0.0)
        if state == "failed":
            self._metrics.failures.labels(self.model, self.version).inc()


class Metrics:
    """A private registry (several servers can live in one process, as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "toolchain_requests",
            "Inference requests answered, by HTTP status.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "toolchain_request_seconds",
            "Inference request latency, arrival to answer.",
            labels,
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.queue = Gauge("toolchain_queue_depth", "Requests waiting or running.", labels, registry=self.registry)
        self.batch = Histogram(
            "toolchain_batch_size",
            "Rows per model run after dynamic batching.",
            labels,
            buckets=_BATCH,
            registry=self.registry,
        )
        self.states = Gauge(
            "toolchain_model_version_state",
            "1 for the state a version is in.",
            (*labels, "state"),
            registry=self.registry,
        )
        self.failures = Counter(
            "toolchain_verification_failures",
            "Versions that failed verification and never served.",
            labels,
            registry=self.registry,
        )
        self.unrouted = Counter(
            "toolchain_unrouted_requests",
            "Requests refused before reaching a model version, by HTTP status.",
            ("status",),
            registry=self.registry,
        )

    def version(self, model: str, version: str) -> VersionMetrics:
        """The metrics of one model version."""
        return VersionMetrics(self, model, version)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
