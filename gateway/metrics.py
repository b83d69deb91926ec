"""Prometheus metrics. Names and labels are part of the contract (see docs/api.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Dense around the 18 ms objective; 0.018 is a bound so the SLO is read off one bucket.
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
        r = self.registry
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request duration by route handler, method and status code.",
            ("handler", "method", "code"),
            buckets=LATENCY_BUCKETS,
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
