"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import os
import time

from handlers.base import BaseHandler
from store.redis_store import iso

SANDBOX_WARNING = (
    "SANDBOX MODE: the sandbox provider is on; its payments are simulated and move no "
    "money. Never run it in production."
)


class HealthHandler(BaseHandler):
    name = "healthz"
    requires_auth = False

    def get(self) -> None:
        self.write_json({"status": "ok", "pid": os.getpid()})


class ReadyHandler(BaseHandler):
    name = "readyz"
    requires_auth = False

    async def get(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        queue = ctx.queue
        lag_ok = queue is None or queue.oldest_age_s <= settings.ready_max_lag_s
        since = None if queue is None else queue.postgres_failing_since_ms
        redis_ok, scripts_ok = await ctx.store.ready()
        checks = {
            "redis": redis_ok,
            "scripts": scripts_ok,
            "accepting": not ctx.draining,
            "writebehind_lag": lag_ok,
            "postgres": since is None,
        }
        # A lagging write-behind, or one PostgreSQL refuses, does not make this process worse
        # at its job (the return path never waits for PostgreSQL), and failing readiness on
        # every instance at once would turn a PostgreSQL outage into a full one: it degrades
        # (decisions 11, 42), unless told to fail on the lag it causes.
        ready = (
            redis_ok
            and scripts_ok
            and not ctx.draining
            and (lag_ok or not settings.ready_fail_on_lag)
        )
        status = "not ready" if not ready else "ready" if lag_ok and since is None else "degraded"
        body = {
            "status": status,
            "checks": checks,
            "writebehind": None
            if queue is None
            else {
                "lag_seconds": round(queue.oldest_age_s, 3),
                "bound_seconds": settings.ready_max_lag_s,
                "queue_length": queue.backlog,
                "pending": queue.pending,
                "dead_letters": queue.dead_letters,
                "last_error": queue.postgres_error,
                "failing_since": None if since is None else iso(since),
                "failing_for_s": None
                if since is None
                else round(max(0.0, time.time() - since / 1000), 1),
            },
            "redis_durability": ctx.redis_durability,
            "providers": sorted(ctx.checkout.providers),
            "sandbox": settings.sandbox,
            "warning": SANDBOX_WARNING if settings.sandbox else None,
        }
        self.write_json(body, 200 if ready else 503)


class MetricsHandler(BaseHandler):
    name = "metrics"
    requires_auth = False

    def get(self) -> None:
        body, content_type = self.ctx.metrics.exposition()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class OpenAPIHandler(BaseHandler):
    name = "openapi"
    requires_auth = False

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(self.ctx.openapi)
