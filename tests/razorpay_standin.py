"""A local stand-in for Razorpay's Orders API (a third party's service, not ours).

It checks basic auth and the body as Razorpay does and answers with an order. ``delay``
slows its answers (for the graceful-shutdown test); ``fail_with`` makes it refuse; ``gate``
holds an order until the test lets it go (``held`` says one is waiting).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import orjson
import tornado.httpserver
import tornado.testing
import tornado.web


class _Orders(tornado.web.RequestHandler):
    def initialize(self, standin: RazorpayStandIn) -> None:
        self.standin = standin

    async def post(self) -> None:
        s = self.standin
        expected = "Basic " + base64.b64encode(f"{s.key_id}:{s.key_secret}".encode()).decode()
        if self.request.headers.get("Authorization") != expected:
            self.set_status(401)
            self.finish(
                {"error": {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed"}}
            )
            return
        if s.delay:
            await asyncio.sleep(s.delay)
        if s.gate is not None:  # held until the test opens the gate (bounded all the same)
            s.held.set()
            await asyncio.wait_for(s.gate.wait(), 30)
        if s.fail_with:
            self.set_status(s.fail_with)
            self.finish({"error": {"code": "SERVER_ERROR"}})
            return
        body: dict[str, Any] = orjson.loads(self.request.body)
        order = {
            "id": "order_" + secrets.token_hex(7),
            "entity": "order",
            "amount": body["amount"],
            "amount_paid": 0,
            "currency": body["currency"],
            "receipt": body["receipt"],
            "notes": body.get("notes", {}),
            "status": "created",
        }
        s.orders[order["id"]] = order
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(order))


class RazorpayStandIn:
    def __init__(self, key_id: str, key_secret: str) -> None:
        self.key_id = key_id
        self.key_secret = key_secret
        self.orders: dict[str, dict[str, Any]] = {}
        self.delay = 0.0
        self.fail_with = 0
        self.gate: asyncio.Event | None = None  # when given, an order waits for it to be set
        self.held = asyncio.Event()  # set when an order is waiting at the gate
        self.url = ""
        self._server: tornado.httpserver.HTTPServer | None = None

    async def start(self) -> None:
        app = tornado.web.Application([(r"/v1/orders", _Orders, {"standin": self})])
        sock, port = tornado.testing.bind_unused_port()
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets([sock])
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
