"""Prometheus metrics. Names and labels are part of the contract (README, Operations).

With several processes (``gateway serve --workers N``) prometheus-client runs in its
multiprocess mode: ``gateway.cli`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before anything imports prometheus-client, each process writes its values there, the
supervisor marks dead workers, and any process's ``/metrics`` adds them all up.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from store.queue import QueueStats
from store.writebehind import Hooks

# Dense around the 18 ms objective; 0.018 is a bound so the SLO is read off one bucket.
CALL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.018,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.008,
    0.010,
    0.012,
    0.014,
    0.016,
    0.018,
    0.020,
    0.025,
    0.030,
    0.040,
    0.050,
    0.075,
    0.100,
    0.250,
    0.500,
    1.0,
    2.5,
)


class Metrics:
    """The gateway's metrics, in a registry of their own (tests build one each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request duration by route handler, method and status code.",
            ("handler", "method", "code"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "gateway_http_errors",
            "Answers with a 4xx or 5xx status, by handler and code (requests in all: "
            "gateway_request_duration_seconds_count).",
            ("handler", "code"),
            registry=r,
        )
        self.redis_calls = Histogram(
            "gateway_redis_call_duration_seconds",
            "Redis calls made while answering requests, by call (script or command).",
            ("call",),
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.postgres_calls = Histogram(
            "gateway_postgres_call_duration_seconds",
            "PostgreSQL calls: write-behind batches (write_batch) and fallback reads (fetch).",
            ("call",),
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.bad_requests = Counter(
            "gateway_bad_requests",
            "Requests refused for bad input, by reason.",
            ("reason",),
            registry=r,
        )
        self.payment_outcomes = Counter(
            "gateway_payment_outcomes",
            "Payment state changes applied, by provider and outcome.",
            ("provider", "outcome"),
            registry=r,
        )
        self.signature_failures = Counter(
            "gateway_signature_failures",
            "Provider notices whose signature did not verify, by provider and channel.",
            ("provider", "channel"),
            registry=r,
        )
        self.mismatches = Counter(
            "gateway_notice_mismatches",
            "Signed notices that disagree with the stored payment, by field.",
            ("provider", "field"),
            registry=r,
        )
        self.bookings_created = Counter(
            "gateway_bookings_created", "Bookings created (one per converted cart).", registry=r
        )
        self.carts_converted = Counter(
            "gateway_carts_converted", "Carts turned CONVERTED.", registry=r
        )
        self.refunds_required = Counter(
            "gateway_refunds_required",
            "Successful payments that made no booking and must be refunded, by reason.",
            ("reason",),
            registry=r,
        )
        self.payments_started = Counter(
            "gateway_payments_started",
            "Payments started, by provider.",
            ("provider",),
            registry=r,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop ran a 50 ms timer, sampled 20 times a second: the time "
            "every request in the process waited for a stall (callbacks, GC, CPU).",
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.connections_open = Gauge(
            "gateway_connections_open",
            "Client connections open (the return lane's and Tornado's), read once a second.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.connections_shed = Counter(
            "gateway_connections_shed",
            "Connections closed at the connection cap (GATEWAY_MAX_CONNECTIONS): 'evicted' "
            "(the one that waited longest for a request) or 'refused' (the new one).",
            ("action",),
            registry=r,
        )
        self.wb_queue_length = Gauge(
            "gateway_writebehind_queue_length",
            "Events not yet acknowledged by the write-behind (pending or not yet delivered).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.wb_pending = Gauge(
            "gateway_writebehind_pending",
            "Events delivered to a write-behind worker and not yet acknowledged.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.wb_lag = Gauge(
            "gateway_writebehind_lag_seconds",
            "Age of the oldest event PostgreSQL does not hold yet (0 when none).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.wb_dead_letter_entries = Gauge(
            "gateway_writebehind_dead_letter_entries",
            "Events in the dead-letter streams, waiting for an operator.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.wb_batch_size = Histogram(
            "gateway_writebehind_batch_size",
            "Events per write-behind batch.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.wb_flush_duration = Histogram(
            "gateway_writebehind_flush_duration_seconds",
            "Time to write one batch to PostgreSQL and acknowledge it.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.wb_retries = Counter(
            "gateway_writebehind_retries",
            "Write-behind steps retried, by what failed (postgres, redis, migrate, groups).",
            ("reason",),
            registry=r,
        )
        self.wb_dead_letters = Counter(
            "gateway_writebehind_dead_letters",
            "Events moved to a dead-letter stream.",
            registry=r,
        )
        self.wb_events = Counter(
            "gateway_writebehind_events",
            "Events taken by the write-behind (written, or dead-lettered).",
            registry=r,
        )

    def child(self, metric: Any, *labels: Any) -> Any:
        """``metric.labels(*labels)``, looked up once per combination: labels() costs more
        than the observation it leads to (decision 20)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def redis_call(self, call: str, seconds: float) -> None:
        self.child(self.redis_calls, call).observe(seconds)

    def postgres_call(self, call: str, seconds: float) -> None:
        self.postgres_calls.labels(call).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets: this process's registry, or every live process's."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def queue(self, stats: QueueStats) -> None:
        self.wb_queue_length.set(stats.backlog)
        self.wb_pending.set(stats.pending)
        self.wb_lag.set(stats.oldest_age_s)
        self.wb_dead_letter_entries.set(stats.dead_letters)


class WriteBehindMetrics(Hooks):
    """The write-behind worker's reports, as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def batch(self, size: int, seconds: float) -> None:
        self.m.wb_batch_size.observe(size)
        self.m.wb_flush_duration.observe(seconds)
        self.m.wb_events.inc(size)

    def retry(self, reason: str) -> None:
        self.m.wb_retries.labels(reason).inc()

    def dead_letter(self, count: int) -> None:
        self.m.wb_dead_letters.inc(count)
