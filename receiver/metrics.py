"""The receiver's Prometheus metrics, on a registry of its own (no global state).

Requests only bump plain ints (prometheus_client's metric objects take a lock and a label
lookup for every update, several per request); :class:`_Collector` turns them into samples
when /metrics is scraped. The receiver is single-threaded (one event loop), so the ints need
no lock.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

#: prometheus_client's default buckets (seconds).
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)


class Histogram:
    """Counts per bucket (``le`` inclusive, as Prometheus means it) and the sum."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = (*(float(b) for b in buckets), INF)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        buckets = []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
        return buckets


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.created = time.time()
        #: (route, status) → requests answered.
        self.requests: dict[tuple[str, int], int] = {}
        #: scheme (or "none") → refused authentications.
        self.auth_failures: dict[str, int] = {}
        self.enqueue_seconds = Histogram(TIME_BUCKETS)
        self.payload_bytes = Histogram(SIZE_BUCKETS)
        registry.register(_Collector(self))

    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def count_auth_failure(self, scheme: str) -> None:
        self.auth_failures[scheme] = self.auth_failures.get(scheme, 0) + 1


class _Collector(Collector):
    def __init__(self, metrics: ReceiverMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "casefetch_receiver_requests",
            "HTTP requests by route and status",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(m.requests.items()):
            requests.add_metric([route, str(status)], count, created=m.created)
        yield requests
        failures = CounterMetricFamily(
            "casefetch_receiver_auth_failures",
            "Refused authentications by scheme",
            labels=["scheme"],
        )
        for scheme, count in sorted(m.auth_failures.items()):
            failures.add_metric([scheme], count, created=m.created)
        yield failures
        for name, documentation, histogram in (
            (
                "casefetch_receiver_enqueue_seconds",
                "Time to write a delivery to Redis",
                m.enqueue_seconds,
            ),
            ("casefetch_receiver_payload_bytes", "Size of accepted payloads", m.payload_bytes),
        ):
            family = HistogramMetricFamily(name, documentation)
            family.add_metric([], histogram.cumulative(), histogram.sum)
            yield family
