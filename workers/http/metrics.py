"""Prometheus metrics of the HTTP worker, registered once per registry."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    # Every HTTP exchange (each retry and redirect hop); outcome is the status class
    # ("2xx", ...) or the failure (connect_error, timeout, too_large, transport_error).
    request_seconds: Histogram
    # Requests the SSRF guard refused, by layer and rule; they never open a connection.
    blocked: Counter
    # Node executions by outcome: completed, failed, blocked, invalid_config, crashed.
    nodes: Counter


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_for(registry: CollectorRegistry = REGISTRY) -> HttpMetrics:
    """The worker metrics in `registry`, created on first use (a registry refuses the
    same name twice, and several workers may share a process)."""
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = HttpMetrics(
            request_seconds=Histogram(
                "aob_http_request_duration_seconds",
                "Duration of outbound HTTP requests made by http nodes",
                ["method", "outcome"],
                registry=registry,
            ),
            blocked=Counter(
                "aob_http_blocked_requests",
                "Requests refused by the SSRF guard",
                ["layer", "rule"],
                registry=registry,
            ),
            nodes=Counter(
                "aob_http_nodes",
                "http node executions by outcome",
                ["outcome"],
                registry=registry,
            ),
        )
        _BY_REGISTRY[registry] = metrics
    return metrics
