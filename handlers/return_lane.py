"""The browser's return, answered below Tornado's ``RequestHandler`` (decision 35).

Bare Tornado spends about 1,007k instructions on a request to a ``RequestHandler`` that
answers a 303 with no work, and 482k when a ``HTTPMessageDelegate`` on the same HTTP server
answers it: routing, ``HTTPServerRequest``, the handler object, its header bookkeeping and
its hooks are the other half. The return is the one route where that is most of the cost,
so ``GatewayApplication.start_request`` gives every request a ``ReturnLane`` first.

The lane takes a request only in the ordinary shape: GET or POST to
``/v1/payments/<configured provider>/return``, a form body (or none) within the size limit,
every field once and in UTF-8. It then runs the same ``return_target`` as ``ReturnHandler``
and answers with the same headers, metrics and access log. Anything else (another route,
method or content type, a duplicate field, a body too large) it hands, before doing any
work, to Tornado's own routing, replaying what it has read: those requests get exactly the
answers they always had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from http.client import responses
from urllib.parse import unquote_plus

import tornado.web
from tornado import httputil

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


class ReturnLane(httputil.HTTPMessageDelegate):
    def __init__(
        self,
        app: tornado.web.Application,
        ctx: Context,
        record: Recorder,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self.app, self.ctx, self.record = app, ctx, record
        self.server_conn, self.request_conn = server_conn, request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None  # Tornado's, once handed over
        self.chunks: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    # -- HTTPMessageDelegate -------------------------------------------------------------

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.started = time.perf_counter()
        self.start_line, self.headers = start_line, headers
        path, _, self.query = start_line.path.partition("?")
        provider = path[len(PREFIX) : -len(SUFFIX)]
        if (
            start_line.method in ("POST", "GET")
            and path.startswith(PREFIX)
            and path.endswith(SUFFIX)
            and provider in self.ctx.checkout.providers
            and "Content-Encoding" not in headers
            and "," not in headers.get("Host", "")
        ):
            self.path, self.provider = path, provider
            return None
        return self._hand_over()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.inner is not None:
            return self.inner.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
            return
        fields = self._fields()
        if fields is None:  # not the ordinary shape: Tornado's routing answers it
            self._hand_over()
            inner = self.inner
            assert inner is not None
            for chunk in self.chunks:
                inner.data_received(chunk)
            inner.finish()
            return
        self.task = asyncio.ensure_future(self._answer(fields))

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()

    # -- the lane -------------------------------------------------------------------------

    def _hand_over(self) -> Awaitable[None] | None:
        self.inner = tornado.web.Application.start_request(
            self.app, self.server_conn, self.request_conn
        )
        return self.inner.headers_received(self.start_line, self.headers)

    def _fields(self) -> dict[str, str] | None:
        """The return's fields, as ``BaseHandler.single_fields`` reads them; None when the
        request is not in the shape this lane answers."""
        body = b"".join(self.chunks) if self.chunks else b""
        limit = self.ctx.settings.max_body_bytes
        length = self.headers.get("Content-Length")
        if len(body) > limit or (length is not None and length.isdigit() and int(length) > limit):
            return None
        fields = ascii_fields(self.query) if self.query else {}
        if fields is None or self.start_line.method != "POST" or not body:
            return fields
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith(FORM) or ctype.split(";")[0].strip().lower() != FORM:
            return None  # 415, or a casing Tornado would not parse as a form
        if not body.isascii():
            return None
        form = ascii_fields(body.decode("ascii"))
        if form is None:
            return None
        fields.update(form)  # a form field wins over a query field of the same name
        return fields

    async def _answer(self, fields: dict[str, str]) -> None:
        ctx = self.ctx
        rid = request_id(self.headers.get("X-Request-ID", ""))
        ctx.in_flight += 1
        try:
            location = ""
            try:
                location, _ = await return_target(ctx, self.provider, fields)
                status, ctype, body = 303, "text/html; charset=UTF-8", b""
            except Exception as exc:  # answered as BaseHandler.write_error answers it
                status, slug, title, detail, reason = describe(exc)
                if not isinstance(exc, GatewayError | tornado.web.HTTPError):
                    log.error(
                        "uncaught exception",
                        exc_info=True,
                        extra={"method": self.start_line.method, "path": self.path},
                    )
                if 400 <= status < 500:
                    ctx.metrics.bad_requests.labels(reason).inc()
                ctype = "application/problem+json"
                body = problem_body(status, slug, title, detail, self.path, rid)
            # the headers a RequestHandler of this gateway sends, in its order
            headers = {
                "Content-Type": ctype,
                "Date": _Date.now(),
                "Cache-Control": "no-store",
                "X-Request-ID": rid,
            }
            if location:
                headers["Location"] = location
            headers["Content-Length"] = str(len(body))
            self.request_conn.write_headers(
                httputil.ResponseStartLine("", status, responses.get(status, "Unknown")),
                httputil.HTTPHeaders(headers),
                body or None,
            )
            self.request_conn.finish()
        finally:
            ctx.in_flight -= 1
        self.record(
            NAME, status, self.start_line.method, self.path, time.perf_counter() - self.started, rid
        )
