"""The browser's return, answered on the gateway's own HTTP/1.1 connections (decisions 35, 38).

Bare Tornado spends about 1,007k instructions on a request to a ``RequestHandler`` that
answers a 303 with no work: about 480k in its HTTP/1 layer (``IOStream``,
``HTTP1Connection``, header parsing and the coroutines between them) and the rest in
routing, ``HTTPServerRequest`` and the handler. On the return, that was more than the
gateway's own work. ``LaneServer`` accepts the gateway's connections as ``asyncio``
protocols instead, and answers a request itself only when it is the ordinary return, in a
shape that is a strict subset of what Tornado accepts (``handlers/lane_head.py`` says
which). It answers with the same code as ``ReturnHandler`` (``return_target``), and the
same headers, problem+json, metrics and access log.

Anything else hands the connection over to Tornado's ``HTTPServer``, which from then on
serves it as it serves every connection, starting with the bytes already read
(``HandedOverStream``): another route, a chunked body, HTTP/1.0, bare LF line ends, a
malformed request all get Tornado's own answers, and ``ReturnHandler`` answers a return in
an unusual shape. A connection is handed over once its head is whole (so that a slow head is
the lane's to time out and evict), or ends at a bare LF, or passes the head limit.

Each head is parsed once, when its blank line has come; until then only the bytes that came
since are searched. A connection idle, or still sending its head, ``idle_timeout_s`` after
its last answer, or still sending a body ``body_timeout_s`` after its head, is closed, as
Tornado closes its own. A client that does not read its answers gets no more until it has
(``pause_writing``), and what it sends meanwhile is bounded. At the process's connection
cap (``handlers/connections.py``) a new connection first closes the connection that has
waited longest for a request (the lane's, else Tornado's); when none waits, it is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from http.client import responses
from typing import cast

import tornado.web
from tornado import httputil

from gateway.errors import GatewayError
from handlers.base import Context, describe, problem_body, request_id
from handlers.connections import Connections, CountedHTTPServer, HandedOverStream
from handlers.lane_head import Head, bare_lf_end, head_of, return_fields
from handlers.payments import ReturnHandler, return_target

log = logging.getLogger("gateway.http")
NAME = ReturnHandler.name

# (route name, status, method, path, elapsed seconds, request id): gateway.app's per-request
# metrics and access log
Recorder = Callable[[str, int, str, str, float, str], None]
BACKLOG = 128  # Tornado's listen backlog (bind_sockets)
EVICT_SCAN = 64  # at the cap, how many of the oldest connections are looked at
CLOSE_S = 10.0  # how long shutting down waits for the answers in hand


class LaneServer:
    """Listens on ``sockets`` with ``ReturnProtocol``; what it does not answer goes to
    ``tornado``. ``stop`` and ``close_all_connections`` as on Tornado's server."""

    def __init__(self, tornado_server: CountedHTTPServer, ctx: Context, record: Recorder) -> None:
        self.tornado, self.ctx, self.record = tornado_server, ctx, record
        settings = ctx.settings
        self.head_limit = tornado_server.conn_params.max_header_size or 65536
        self.idle_s = float(settings.idle_timeout_s)
        self.body_s = float(settings.body_timeout_s)
        self.max_body = settings.max_body_bytes
        self.providers = frozenset(ctx.checkout.providers)
        self.connections: Connections = tornado_server.connections
        self.connections.on_tick.append(self._sweep)
        self.listeners: list[asyncio.Server] = []
        # the lane's connections, the longest waiting for a request first (an answered
        # connection goes to the end): what the cap evicts, and what the sweep closes
        self.protocols: dict[ReturnProtocol, None] = {}
        self.closing = False  # close_all_connections: no request after the one in hand

    async def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(
                lambda: ReturnProtocol(self), sock=sock, backlog=BACKLOG
            )
            self.listeners.append(server)

    def stop(self) -> None:
        """Stop accepting connections (those open go on)."""
        for server in self.listeners:
            server.close()
        self.tornado.stop()

    async def close_all_connections(self, timeout_s: float = CLOSE_S) -> None:
        """Close every connection: ours once the answer in hand is out (or at ``timeout_s``),
        then Tornado's."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while self.protocols:
            late = time.monotonic() > deadline
            for conn in list(self.protocols):
                if late or not conn.busy:
                    conn.transport.abort() if late else conn.transport.close()
                    self.protocols.pop(conn, None)
            if self.protocols:
                await asyncio.sleep(0.01)
        await self.tornado.close_all_connections()

    def admit(self, conn: ReturnProtocol) -> bool:
        """Count a new connection in; at the cap, first close the connection that has waited
        longest for a request (the lane's, else Tornado's); False: refuse the new one."""
        count = self.connections
        if count.full:
            for waiting in itertools.islice(self.protocols, EVICT_SCAN):
                if not waiting.busy and not waiting.leaving:
                    # (its connection_lost takes it off the count, on the loop's next turn)
                    waiting.transport.abort()
                    self.protocols.pop(waiting, None)
                    count.shedding("evicted")
                    break
            else:
                if not self.tornado.evict_waiting():
                    count.shedding("refused")
                    return False
        count.open += 1
        self.protocols[conn] = None
        return True

    def _sweep(self) -> None:
        """Close connections idle or stuck in a request's head past ``idle_s``, or in its
        body past ``body_s``."""
        now = time.monotonic()
        for conn in list(self.protocols):
            if not conn.busy and conn.deadline < now:
                conn.transport.close()


class ReturnProtocol(asyncio.Protocol):
    """One client connection: answers ordinary returns in order, hands over the rest."""

    transport: asyncio.Transport

    def __init__(self, server: LaneServer) -> None:
        self.server = server
        self.buf: bytes | bytearray = b""
        self.scanned = 0  # how far the search for the head's end has looked
        self.head: Head | None = None  # a head whose body is still coming
        self.busy = False  # a request is being answered; later ones wait in buf
        self.writable = True  # False while what was written waits for the client to read
        self.paused = False  # reading paused: too much waits unanswered
        self.leaving = False  # handed over once what was written has gone out
        self.counted = False
        self.task: asyncio.Future[None] | None = None  # the answer being made
        self.deadline = time.monotonic() + server.idle_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.server.admit(self):
            self.counted = True
        else:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self.counted:
            self.counted = False
            server.connections.open -= 1
        server.protocols.pop(self, None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if not buf:
            self.buf = data
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self.buf = bytearray(buf) + data
        if not self.busy and self.writable:
            self._next()
        elif len(self.buf) > self.server.head_limit + self.server.max_body:
            self.transport.pause_reading()  # pipelined, or the client does not read: bound it
            self.paused = True

    def pause_writing(self) -> None:
        # The client is not reading what it was sent: answer nothing more until it has
        # (Tornado too reads the next request only once an answer has gone out).
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.leaving:
            self._hand_over()
        elif not self.busy:
            self._resume()

    def _resume(self) -> None:
        """Go on with what waits in ``buf``, reading again if that was paused."""
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.buf:
            self._next()

    def _next(self) -> None:
        """Answer the request at the head of ``buf`` once it is whole, or hand the
        connection over once its head is whole and not one the lane answers."""
        buf, server = self.buf, self.server
        head = self.head
        if head is None:
            limit = server.head_limit
            end = buf.find(b"\r\n\r\n", self.scanned)
            if end < 0:
                # Tornado also ends a head at bare LF; a head too large it refuses
                if len(buf) > limit or bare_lf_end(buf, self.scanned):
                    self._hand_over()
                else:
                    self.scanned = max(0, len(buf) - 3)
                return
            head = head_of(buf, end, server.providers, server.max_body)
            if head is None or end + 4 > limit:
                self._hand_over()
                return
            if len(buf) < head.total:  # the body is still coming
                self.head = head
                self.deadline = time.monotonic() + server.body_s
                return
        elif len(buf) < head.total:
            return
        form = return_fields(
            head.method, head.query, head.content_type, buf[head.body : head.total]
        )
        if form is None:
            self._hand_over()
            return
        self.busy = True
        self.head = None
        self.scanned = 0
        self.buf = buf[head.total :]
        self.task = asyncio.ensure_future(self._answer(head, form, time.perf_counter()))

    async def _answer(self, head: Head, fields: dict[str, str], started: float) -> None:
        server = self.server
        transport = self.transport
        try:
            status, headers, body, rid = await respond(
                server.ctx, head.method, head.path, head.provider, fields, head.request_id
            )
            closing = head.closing or server.closing
            if closing:
                headers["Connection"] = "close"
            lines = [f"HTTP/1.1 {status} {responses.get(status, 'Unknown')}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            if not transport.is_closing():
                # UTF-8, as Tornado sends the Location of a redirect (the rest is ASCII)
                transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                if closing:
                    transport.close()
            server.record(NAME, status, head.method, head.path, time.perf_counter() - started, rid)
        finally:
            self.busy = False
        self.deadline = time.monotonic() + server.idle_s
        protocols = server.protocols
        if protocols.pop(self, 0) is None:  # to the end: the last to be evicted
            protocols[self] = None
        if self.writable and not transport.is_closing():
            self._resume()

    def _hand_over(self) -> None:
        """Give the connection, and what has been read of it, to Tornado's server, once
        the answers written to it have gone out."""
        transport = self.transport
        transport.pause_reading()
        if transport.get_write_buffer_size() and not transport.is_closing():
            self.leaving = True  # resume_writing comes when the buffer is empty
            transport.set_write_buffer_limits(high=0)
            return
        self.leaving = False
        server = self.server
        server.protocols.pop(self, None)
        raw = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if raw is None or transport.is_closing():
            transport.abort()
            return
        # The transport closes its descriptor; a duplicate keeps the connection open.
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError as exc:  # out of descriptors, most likely: the client tries again
            log.warning("could not hand a connection over", extra={"error": str(exc)})
            transport.abort()
            return
        transport.abort()  # connection_lost takes it off the count; Tornado's adopt adds it
        tornado = server.tornado
        stream = HandedOverStream(
            sock,
            bytes(self.buf),
            max_buffer_size=tornado.max_buffer_size,
            read_chunk_size=tornado.read_chunk_size,
        )
        self.buf = b""
        tornado.adopt(stream, peer)


class _Date:
    """The Date header, formatted once a second rather than per response."""

    second, text = -1, ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, httputil.format_timestamp(second)
        return cls.text


async def respond(
    ctx: Context, method: str, path: str, provider: str, fields: dict[str, str], given_id: str
) -> tuple[int, dict[str, str], bytes, str]:
    """Settle the return and say what to answer: status, the headers a ``RequestHandler``
    of this gateway sends (in its order), body, and the request id."""
    rid = request_id(given_id)
    ctx.in_flight += 1
    try:
        location = ""
        try:
            location, _ = await return_target(ctx, provider, fields)
            status, ctype, body = 303, "text/html; charset=UTF-8", b""
        except Exception as exc:  # answered as BaseHandler.write_error answers it
            status, slug, title, detail, reason = describe(exc)
            if not isinstance(exc, GatewayError | tornado.web.HTTPError):
                log.error(
                    "uncaught exception", exc_info=True, extra={"method": method, "path": path}
                )
            if 400 <= status < 500:
                ctx.metrics.bad_requests.labels(reason).inc()
            ctype = "application/problem+json"
            body = problem_body(status, slug, title, detail, path, rid)
        headers = {
            "Content-Type": ctype,
            "Date": _Date.now(),
            "Cache-Control": "no-store",
            "X-Request-Id": rid,  # as Tornado spells it on the wire
        }
        if location:
            headers["Location"] = location
        headers["Content-Length"] = str(len(body))
        return status, headers, body, rid
    finally:
        ctx.in_flight -= 1
