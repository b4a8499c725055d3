"""The receiver's Prometheus metrics, on a registry of its own (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "casefetch_receiver_requests", "HTTP requests by route and status",
            ["route", "status"], registry=registry)
        self.auth_failures = Counter(
            "casefetch_receiver_auth_failures", "Refused authentications by scheme",
            ["scheme"], registry=registry)
        self.enqueue_seconds = Histogram(
            "casefetch_receiver_enqueue_seconds", "Time to write a delivery to Redis",
            registry=registry)
        self.payload_bytes = Histogram(
            "casefetch_receiver_payload_bytes", "Size of accepted payloads",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
            registry=registry)
        self._request_counters: dict[tuple[str, int], Any] = {}

    def request_counter(self, route: str, status: int) -> Any:
        """The counter of one route and status (``labels()`` is slow for every request)."""
        key = (route, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(
                route=route, status=str(status))
        return counter
