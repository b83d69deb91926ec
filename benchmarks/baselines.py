"""The two baselines the gateway is measured against, as servers of the same shape.

    python -m benchmarks.baselines bare --port P [--processes 2]
    python -m benchmarks.baselines protocol --port P [--processes 2]
    python -m benchmarks.baselines sync --port P --dsn DSN --salt SALT [--processes 2]
    python -m benchmarks.baselines hotpath --port P --redis URL --prefix P --salt SALT

``bare``: the framework's ceiling. A Tornado handler answering the return with the same 303
and no work at all.

``protocol``: the ceiling of the connections the gateway's return runs on since decision 38
(``handlers.return_lane.LaneServer``): an ``asyncio`` protocol on uvloop that finds the end
of the request's head and body and answers the same 303, with no work at all.

``sync``: the synchronous design this gateway replaces. The handler verifies the same PayU
reverse hash, then, in the request, with a blocking driver (psycopg2), on the gateway's own
tables: BEGIN, SELECT … FOR UPDATE the payment and its cart, UPDATE the payment, INSERT the
booking (the cart's items copied in), UPDATE the cart, COMMIT, and 303. The checks are the
gateway's: amount, payment not already paid, cart still CHECKOUT, unexpired and unchanged.

``hotpath``: the issue's prototype of the return path, rebuilt: the same PayU reverse hash,
then the gateway's own settle call (``RedisStore.settle``: ``store/lua/payment_settle.lua``,
one EVALSHA on the gateway's pipelined connection, ``store/resp.py``) and the 303, and
nothing else: no
write-behind reads its events, no PostgreSQL, no metrics, no logging, no request ids, one
route. It tells how much of the gap to bare Tornado is the hot path itself and how much is
the rest of the gateway.

All of them fork ``--processes`` processes, each binding its own SO_REUSEPORT socket, like
``gateway serve --workers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import sys
import time
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado import httputil

TARGET = "https://merchant.example/ok?txnid={txnid}&booking_id={booking_id}&status=success"


def reverse_hash(f: dict[str, str], salt: str) -> str:
    seq = [
        salt,
        f.get("status", ""),
        "",
        "",
        "",
        "",
        "",
        *(f.get(f"udf{i}", "") for i in (5, 4, 3, 2, 1)),
        f.get("email", ""),
        f.get("firstname", ""),
        f.get("productinfo", ""),
        f.get("amount", ""),
        f.get("txnid", ""),
        f.get("key", ""),
    ]
    return hashlib.sha512("|".join(seq).encode()).hexdigest()


class Bare(tornado.web.RequestHandler):
    def post(self) -> None:
        self.redirect(TARGET.format(txnid="t", booking_id="b"), status=303)


class BareProtocol(asyncio.Protocol):
    """Bare Tornado's answer, on a bare connection: no parsing beyond the framing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            location = TARGET.format(txnid="t", booking_id="b")
            self.transport.write(
                f"HTTP/1.1 303 See Other\r\nContent-Type: text/html; charset=UTF-8\r\n"
                f"Date: {httputil.format_timestamp(time.time())}\r\nLocation: {location}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )


class Sync(tornado.web.RequestHandler):
    """The same settlement the gateway's Lua script makes, in one PostgreSQL transaction, on
    the gateway's own tables (``gateway migrate``), so both end with the same rows."""

    def initialize(self, conn: Any, salt: str) -> None:
        self.conn = conn
        self.salt = salt

    def post(self) -> None:
        f = {k: v[0].decode() for k, v in self.request.body_arguments.items()}
        if not hmac.compare_digest(reverse_hash(f, self.salt), f.get("hash", "")):
            self.redirect("https://merchant.example/failed?reason=bad_signature", status=303)
            return
        txnid = f["txnid"]
        with self.conn, self.conn.cursor() as cur:  # BEGIN … COMMIT
            cur.execute(
                "SELECT p.cart_id, p.amount, p.status, p.cart_version, c.status, c.version, "
                "c.user_id, c.items::text, c.currency, c.expires_at > now() "
                "FROM payments p JOIN carts c USING (cart_id) WHERE p.txnid = %s "
                "FOR UPDATE",
                (txnid,),
            )
            row = cur.fetchone()
            if row is None:
                self.send_error(400)
                return
            cart_id, amount, status, cart_version, cart_status, version = row[:6]
            user_id, items, currency, live = row[6:]
            booking_id = "b" + cart_id[1:]
            paid = int(f["amount"].replace(".", ""))  # "1299.00" -> 129900, as the test sends
            if status != "SUCCESS" and amount == paid:
                books = cart_status == "CHECKOUT" and live and version == cart_version
                cur.execute(
                    "UPDATE payments SET status = 'SUCCESS', provider_payment_id = %s, "
                    "booking_id = %s, refund_required = %s, rev = rev + 1, updated_at = now() "
                    "WHERE txnid = %s",
                    (f.get("mihpayid"), booking_id if books else None, not books, txnid),
                )
                if books:
                    cur.execute(
                        "INSERT INTO bookings (booking_id, cart_id, txnid, user_id, status, "
                        "items, amount, currency, created_at) "
                        "VALUES (%s, %s, %s, %s, 'CONFIRMED', %s, %s, %s, now())",
                        (booking_id, cart_id, txnid, user_id, items, amount, currency),
                    )
                    cur.execute(
                        "UPDATE carts SET status = 'CONVERTED', txnid = %s, rev = rev + 1, "
                        "updated_at = now() WHERE cart_id = %s",
                        (txnid, cart_id),
                    )
        self.redirect(TARGET.format(txnid=txnid, booking_id=booking_id), status=303)


class HotPath(tornado.web.RequestHandler):
    """Hash check, one Lua script (``RedisStore.settle``), 303."""

    def initialize(self, store: Any, salt: str) -> None:
        self.store, self.salt = store, salt

    async def post(self) -> None:
        f = {k: v[0].decode() for k, v in self.request.body_arguments.items()}
        if not hmac.compare_digest(reverse_hash(f, self.salt), f.get("hash", "")):
            self.redirect("https://merchant.example/failed?reason=bad_signature", status=303)
            return
        txnid = f["txnid"]
        settled = await self.store.settle(
            txnid,
            "success",
            "payu",
            amount=int(f["amount"].replace(".", "")),  # "1299.00" -> 129900, as the test sends
            provider_payment_id=f.get("mihpayid", ""),
        )
        booking_id = settled.payment["booking_id"]
        self.redirect(TARGET.format(txnid=txnid, booking_id=booking_id), status=303)


def serve(kind: str, port: int, dsn: str, salt: str, redis: str = "", prefix: str = "") -> None:
    handlers: list[Any]
    if kind == "hotpath":
        handlers = [(r"/v1/payments/payu/return", HotPath, {"salt": salt})]  # store: in main
    elif kind == "sync":
        import psycopg2

        conn = psycopg2.connect(dsn)
        handlers = [(r"/v1/payments/payu/return", Sync, {"conn": conn, "salt": salt})]
    else:
        handlers = [(r"/v1/payments/payu/return", Bare)]

    async def main() -> None:
        if kind == "hotpath":  # the gateway's store, made on this process's loop
            from store.redis_store import RedisStore

            store = await RedisStore.connect(redis, prefix, cart_ttl_s=3600, payment_window_s=86400)
            handlers[0][2]["store"] = store
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", reuse_port=True)
        loop = asyncio.get_running_loop()
        if kind == "protocol":
            for sock in sockets:
                await loop.create_server(BareProtocol, sock=sock, backlog=128)
        else:
            server = tornado.httpserver.HTTPServer(tornado.web.Application(handlers))
            server.add_sockets(sockets)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    import uvloop

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["bare", "protocol", "sync", "hotpath"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--salt", default="")
    parser.add_argument("--redis", default="")
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                serve(args.kind, args.port, args.dsn, args.salt, args.redis, args.prefix)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
