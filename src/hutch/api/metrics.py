"""Prometheus metrics on a per-app registry: requests by route template, sandboxes by state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hutch.models.common import SandboxState


class _SandboxesByState(Collector):
    """Counts sandboxes per state from the database at scrape time (always current)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        g = GaugeMetricFamily("hutch_sandboxes", "Sandboxes by state", labels=["state"])
        for state in SandboxState:
            g.add_metric([state.value], counts.get(state.value, 0))
        yield g


class Metrics:
    """The app's metrics."""

    def __init__(self, sandbox_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hutch_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hutch_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(_SandboxesByState(sandbox_counts))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
