"""The browser's return, answered on the gateway's own HTTP/1.1 connections (decisions 35, 38).

Bare Tornado spends about 1,007k instructions on a request to a ``RequestHandler`` that
answers a 303 with no work: about 480k in its HTTP/1 layer (``IOStream``,
``HTTP1Connection``, header parsing and the coroutines between them) and the rest in
routing, ``HTTPServerRequest`` and the handler. On the return, that was more than the
gateway's own work. ``LaneServer`` accepts the gateway's connections as ``asyncio``
protocols instead, and answers a request itself only when it is the ordinary return:
``GET`` or ``POST`` to ``/v1/payments/<configured provider>/return`` over HTTP/1.1, a plain
header block (each header once; no ``Transfer-Encoding``, ``Expect`` or
``Content-Encoding``), a ``Content-Length`` body within the limit, ASCII fields each given
once (``return_fields``). It answers with the same code as ``ReturnHandler``
(``return_target``), and the same headers, problem+json, metrics and access log.

Anything else hands the connection over to Tornado's ``HTTPServer``, which from then on
serves it as it serves every connection, starting with the bytes already read: another
route, a chunked body, HTTP/1.0, a malformed request all get Tornado's own answers, and
``ReturnHandler`` answers a return in an unusual shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from http.client import responses
from typing import cast
from urllib.parse import unquote_plus

import tornado.web
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

from gateway.errors import GatewayError
from handlers.base import Context, describe, problem_body, request_id
from handlers.payments import ReturnHandler, return_target

log = logging.getLogger("gateway.http")
PREFIX, SUFFIX = "/v1/payments/", "/return"
FORM = "application/x-www-form-urlencoded"
MAX_FIELDS = 1000  # Tornado's default limit on a form's or a query's fields
NAME = ReturnHandler.name

# (route name, status, method, path, elapsed seconds, request id): gateway.app's per-request
# metrics and access log
Recorder = Callable[[str, int, str, str, float, str], None]
HEAD_LIMIT = 65536  # Tornado's default max_header_size
BACKLOG = 128  # Tornado's listen backlog (bind_sockets)
SWEEP_S = 5.0  # how often idle connections are looked for
# The request line and a header block of token names and values without control
# characters: what Tornado accepts without a 400. Anything else is handed over.
HEAD_RE = re.compile(
    rb"(GET|POST) (/[!-~]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)\r\n"
)
FIELD_RE = re.compile(rb"([^:]+):([^\r]*)\r\n")
HANDED_OVER = (b"transfer-encoding", b"expect", b"content-encoding")


class LaneServer:
    """Listens on ``sockets`` with ``ReturnProtocol``; what it does not answer goes to
    ``tornado_server``. ``stop`` and ``close_all_connections`` as on Tornado's server."""

    def __init__(self, tornado_server: HTTPServer, ctx: Context, record: Recorder) -> None:
        self.tornado, self.ctx, self.record = tornado_server, ctx, record
        # the limits Tornado's server was given, so that both close and refuse alike
        params = tornado_server.conn_params
        self.head_limit = params.max_header_size or HEAD_LIMIT
        self.idle_s = params.header_timeout or 3600.0  # its idle_connection_timeout
        self.providers = frozenset(ctx.checkout.providers)
        self.listeners: list[asyncio.Server] = []
        self.connections: set[ReturnProtocol] = set()
        self.sweeper: asyncio.TimerHandle | None = None

    async def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(
                lambda: ReturnProtocol(self), sock=sock, backlog=BACKLOG
            )
            self.listeners.append(server)
        self.sweeper = loop.call_later(SWEEP_S, self._sweep)

    def stop(self) -> None:
        """Stop accepting connections (those open go on)."""
        for server in self.listeners:
            server.close()
        self.tornado.stop()
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None

    async def close_all_connections(self) -> None:
        """Close every connection: ours once its answer is out, then Tornado's."""
        while self.connections:
            for conn in list(self.connections):
                if not conn.busy:
                    conn.transport.close()
                    self.connections.discard(conn)
            if self.connections:
                await asyncio.sleep(0.01)
        await self.tornado.close_all_connections()

    def _sweep(self) -> None:
        """Close connections idle (or stuck in a request's head) for ``idle_s``."""
        deadline = time.monotonic() - self.idle_s
        for conn in list(self.connections):
            if not conn.busy and conn.since < deadline:
                conn.transport.close()
        self.sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)


class ReturnProtocol(asyncio.Protocol):
    """One client connection: answers ordinary returns in order, hands over the rest."""

    transport: asyncio.Transport

    def __init__(self, server: LaneServer) -> None:
        self.server = server
        self.buf = b""
        self.busy = False  # a request is being answered; later ones wait in buf
        self.paused = False
        self.leaving = False  # handed over once what was written has gone out
        self.task: asyncio.Future[None] | None = None  # the answer being made
        self.since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.busy:  # pipelined: bound what waits
            if len(self.buf) > self.server.head_limit + self.server.ctx.settings.max_body_bytes:
                self.transport.pause_reading()
                self.paused = True
        else:
            self._next()

    def _next(self) -> None:
        """Answer the request at the head of ``buf`` when it is whole and ordinary."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        limit = self.server.head_limit
        if end < 0 or end > limit:
            if len(buf) > limit:
                self._hand_over()  # Tornado answers a head too large
            return
        head = HEAD_RE.match(buf, 0, end + 4)
        if head is None:
            self._hand_over()
            return
        method, target, block = head.groups()
        fields = FIELD_RE.findall(block)
        headers = {name.lower(): value.strip() for name, value in fields}
        if len(headers) != len(fields) or any(name in headers for name in HANDED_OVER):
            self._hand_over()
            return
        length_text = headers.get(b"content-length", b"0")
        # (int() of thousands of digits is slow, then refused: Tornado answers those)
        length = int(length_text) if length_text.isdigit() and len(length_text) <= 9 else -1
        if not 0 <= length <= self.server.ctx.settings.max_body_bytes:
            self._hand_over()
            return
        total = end + 4 + length
        if len(buf) < total:
            return  # the body is still coming
        path, _, query = target.decode("ascii").partition("?")
        provider = path[len(PREFIX) : -len(SUFFIX)]
        host = headers.get(b"host")
        if (
            not path.startswith(PREFIX)
            or not path.endswith(SUFFIX)
            or provider not in self.server.providers
            or host is None
            or b"," in host
        ):
            self._hand_over()
            return
        method_s = method.decode("ascii")
        form = return_fields(
            method_s,
            query,
            headers.get(b"content-type", b"").decode("latin-1"),
            buf[end + 4 : total],
        )
        if form is None:
            self._hand_over()
            return
        self.busy = True
        closing = headers.get(b"connection", b"").lower() == b"close"
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        started = time.perf_counter()
        self.task = asyncio.ensure_future(
            self._answer(method_s, path, provider, form, given, closing, started)
        )
        self.buf = buf[total:]

    async def _answer(
        self,
        method: str,
        path: str,
        provider: str,
        fields: dict[str, str],
        given_id: str,
        closing: bool,
        started: float,
    ) -> None:
        status, headers, body, rid = await respond(
            self.server.ctx, method, path, provider, fields, given_id
        )
        if closing:
            headers["Connection"] = "close"
        lines = [f"HTTP/1.1 {status} {responses.get(status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        transport = self.transport
        if not transport.is_closing():
            # UTF-8, as Tornado sends the Location of a redirect (the rest is ASCII)
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            if closing:
                transport.close()
        self.server.record(NAME, status, method, path, time.perf_counter() - started, rid)
        self.busy = False
        self.since = time.monotonic()
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if self.buf and not closing:
            self._next()

    def resume_writing(self) -> None:
        if self.leaving:
            self._hand_over()

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
        self.server.connections.discard(self)
        raw = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if raw is None or transport.is_closing():
            transport.abort()
            return
        # The transport closes its descriptor; a duplicate keeps the connection open.
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        transport.abort()
        tornado = self.server.tornado
        stream = IOStream(
            sock, max_buffer_size=tornado.max_buffer_size, read_chunk_size=tornado.read_chunk_size
        )
        if self.buf:  # Tornado's connection reads these first (tornado 6.6's IOStream)
            stream._read_buffer += self.buf
            stream._read_buffer_size += len(self.buf)
            self.buf = b""
        tornado.handle_stream(stream, peer)


class _Date:
    """The Date header, formatted once a second rather than per response."""

    second, text = -1, ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, httputil.format_timestamp(second)
        return cls.text


def _unquote(text: str) -> str:
    return unquote_plus(text, errors="strict") if "%" in text or "+" in text else text


def ascii_fields(text: str) -> dict[str, str] | None:
    """An ASCII query or form, each field once, its values UTF-8: what Tornado's
    ``parse_qs_bytes`` and ``fields_of`` make of it, in half the instructions (75k against
    167k for a PayU return). None for anything else (a field given twice, text that is not
    ASCII or not UTF-8 once unquoted, a name that is not ASCII, more fields than Tornado
    takes): Tornado's routing then answers it, as it always has."""
    if not text.isascii() or text.count("&") >= MAX_FIELDS:
        return None
    parts = [part for part in text.split("&") if part]
    fields: dict[str, str] = {}
    if "%" in text or "+" in text:
        try:
            for part in parts:
                name, _, value = part.partition("=")
                name = _unquote(name)
                if not name.isascii():
                    return None
                fields[name] = _unquote(value)
        except UnicodeDecodeError:
            return None
    else:
        fields = dict(part.partition("=")[::2] for part in parts)
    return fields if len(fields) == len(parts) else None


def return_fields(method: str, query: str, ctype: str, body: bytes) -> dict[str, str] | None:
    """The return's fields, as ``BaseHandler.single_fields`` reads them; None when the
    request is not in the shape the lane answers (Tornado's routing then does). The body is
    within the size limit already (``ReturnProtocol`` hands a larger one over)."""
    fields = ascii_fields(query) if query else {}
    if fields is None or method != "POST" or not body:
        return fields
    if not ctype.startswith(FORM) or ctype.split(";")[0].strip().lower() != FORM:
        return None  # 415, or a casing Tornado would not parse as a form
    if not body.isascii():
        return None
    form = ascii_fields(body.decode("ascii"))
    if form is None:
        return None
    fields.update(form)  # a form field wins over a query field of the same name
    return fields


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
