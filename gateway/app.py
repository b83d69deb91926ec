"""Opens the stores, and builds the Tornado application from them: routes, context, metrics."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import tornado.web

from gateway import openapi
from gateway.checkout import Checkout
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.providers import build_providers
from gateway.providers.base import Provider
from handlers.base import BaseHandler, Context, NotFoundHandler
from handlers.carts import (
    CartHandler,
    CartItemHandler,
    CartItemsHandler,
    CartPaymentsHandler,
    CartsHandler,
)
from handlers.connections import Connections, CountedHTTPServer, connection_cap
from handlers.ops import HealthHandler, MetricsHandler, OpenAPIHandler, ReadyHandler
from handlers.payments import BookingHandler, PaymentHandler, ReturnHandler, WebhookHandler
from handlers.return_lane import LaneServer, Recorder
from handlers.sandbox import DemoResultHandler, SandboxPayHandler
from store.pg_store import PgStore
from store.redis_store import RedisStore

log = logging.getLogger("gateway.http")
SEG = r"([^/]+)"
HEAD_LIMIT = 65536  # bytes of a request head (Tornado's default max_header_size)
Server = (
    CountedHTTPServer | LaneServer
)  # what ``listen`` serves with: stop(), close_all_connections()

# Tornado tries the routes in order, one regular expression each; the patterns are disjoint
# (each is anchored), so the order only decides the cost: the providers' routes first.
ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (rf"/v1/payments/{SEG}/return", ReturnHandler),
    (rf"/v1/payments/{SEG}/webhook", WebhookHandler),
    (r"/v1/carts", CartsHandler),
    (rf"/v1/carts/{SEG}", CartHandler),
    (rf"/v1/carts/{SEG}/items", CartItemsHandler),
    (rf"/v1/carts/{SEG}/items/{SEG}", CartItemHandler),
    (rf"/v1/carts/{SEG}/payments", CartPaymentsHandler),
    (rf"/v1/payments/{SEG}", PaymentHandler),
    (rf"/v1/bookings/{SEG}", BookingHandler),
    (r"/metrics", MetricsHandler),
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/openapi.json", OpenAPIHandler),
    (r"/sandbox/pay", SandboxPayHandler),
    (rf"/demo/{SEG}", DemoResultHandler),
]


@contextlib.asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[tuple[RedisStore, PgStore]]:
    """Redis (connected, scripts loaded) and the PostgreSQL pool (connecting lazily)."""
    store = await RedisStore.connect(
        settings.redis_url,
        settings.redis_prefix,
        cart_ttl_s=settings.cart_ttl_s,
        payment_window_s=settings.payment_window_s,
    )
    async with store, await PgStore.open(settings.database_url) as pg:
        yield store, pg


def make_app(
    settings: Settings,
    store: RedisStore,
    metrics: Metrics | None = None,
    providers: dict[str, Provider] | None = None,
    pg: PgStore | None = None,
) -> GatewayApplication:
    """The application, with its ``Context`` reachable as ``app.settings['ctx']``."""
    metrics = metrics or Metrics()
    timed = settings.request_metrics
    if timed:
        store.observe = metrics.redis_call
        if pg is not None:
            pg.observe = metrics.postgres_call
    providers = build_providers(settings) if providers is None else providers
    checkout = Checkout(settings, store, providers, metrics, pg)
    ctx = Context(settings, store, checkout, metrics, orjson.dumps(openapi.document()), pg)
    histogram = metrics.request_duration
    errors = metrics.errors
    access_log = log.isEnabledFor(logging.INFO)  # one JSON line per request at info

    def record(
        name: str, status: int, method: str, path: str, elapsed: float, rid: str | None
    ) -> None:
        if timed:
            metrics.child(histogram, name, method, status).observe(elapsed)
        if status >= 400:
            errors.labels(name, str(status)).inc()
        if access_log:
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": rid,
                },
            )

    def log_request(handler: Any) -> None:
        request = handler.request
        record(
            getattr(handler, "name", "unknown"),
            handler.get_status(),
            request.method,
            request.path,
            request.request_time(),
            getattr(handler, "request_id", None),
        )

    return GatewayApplication(
        [(pattern, handler, {"ctx": ctx}) for pattern, handler in ROUTES],
        record,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=log_request,
        compress_response=False,
        xheaders=False,
        ctx=ctx,
    )


class GatewayApplication(tornado.web.Application):
    """Tornado's application, with what ``listen`` needs to put ``LaneServer`` in front of
    it: the context, the per-request recorder, and whether the lane is on."""

    def __init__(self, routes: list[Any], record: Recorder, **settings: Any) -> None:
        super().__init__(routes, **settings)
        self.record = record
        self.ctx: Context = settings["ctx"]
        self.lane = self.ctx.settings.return_lane  # GATEWAY_RETURN_LANE


async def listen(app: GatewayApplication, sockets: list[socket.socket], **options: Any) -> Server:
    """Serve ``app`` on ``sockets``: through ``LaneServer`` (decision 38), which answers the
    ordinary return itself and hands every other connection to Tornado's ``HTTPServer``,
    or, with ``GATEWAY_RETURN_LANE=false``, through that server alone. Both close a
    connection idle (or sending a head) past ``GATEWAY_IDLE_TIMEOUT_S`` or a body past
    ``GATEWAY_BODY_TIMEOUT_S``, and count their connections under one cap
    (``handlers/connections.py``). ``options`` go to Tornado's server."""
    settings = app.ctx.settings
    options = {
        "idle_connection_timeout": settings.idle_timeout_s,
        "body_timeout": settings.body_timeout_s,
        "max_header_size": HEAD_LIMIT,
        "xheaders": False,
        **options,
    }
    server = CountedHTTPServer(app, **options)
    server.connections = Connections(connection_cap(settings.max_connections), app.ctx.metrics)
    server.connections.start()
    if not app.lane:
        server.add_sockets(sockets)
        return server
    lane = LaneServer(server, app.ctx, app.record)
    await lane.add_sockets(sockets)
    return lane
