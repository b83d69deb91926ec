"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    name = "healthz"
    requires_auth = False

    def get(self) -> None:
        self.write_json({"status": "ok", "pid": os.getpid()})


class ReadyHandler(BaseHandler):
    name = "readyz"
    requires_auth = False

    async def get(self) -> None:
        checks = {
            "redis": await self.ctx.store.ping(),
            "accepting": not self.ctx.draining,
        }
        ready = all(checks.values())
        body = {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "providers": sorted(self.ctx.checkout.providers),
            "sandbox": self.ctx.settings.sandbox,
        }
        self.write_json(body, 200 if ready else 503)


class MetricsHandler(BaseHandler):
    name = "metrics"
    requires_auth = False

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.ctx.metrics.registry))


class OpenAPIHandler(BaseHandler):
    name = "openapi"
    requires_auth = False

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(self.ctx.openapi)
