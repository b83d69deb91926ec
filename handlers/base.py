"""What every handler shares: the context, auth, JSON in and out, and problem+json errors."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from dataclasses import dataclass
from http.client import responses
from typing import Any, ClassVar

import orjson
import tornado.web
from tornado import httputil

from gateway.checkout import Checkout
from gateway.config import Settings
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.forms import fields_of, invalid_form, require_form
from gateway.metrics import Metrics
from gateway.signing import signatures_match
from store.pg_store import PgStore
from store.queue import QueueStats
from store.redis_store import RedisStore

log = logging.getLogger("gateway.http")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids made here: a random per-process prefix and a counter (16 hex digits). Cheaper
# than reading the system's random source on every request (about 2 % of a return).
_ID_PREFIX = secrets.token_hex(3)
_ids = itertools.count(1)
PROBLEM_BASE = "https://payment-return-gateway.dev/problems/"


def request_id(given: str) -> str:
    """The caller's X-Request-ID when it is well-formed, else a new one."""
    return given if REQUEST_ID_RE.match(given) else f"{_ID_PREFIX}{next(_ids):010x}"


def describe(exc: BaseException | None) -> tuple[int, str, str, str, str]:
    """What an exception is answered with: status, problem slug, title, detail, and the
    reason label the metrics count it under."""
    if isinstance(exc, tornado.web.HTTPError) and isinstance(
        exc.__cause__, httputil.HTTPInputError
    ):
        # Tornado refused to parse the body (a form of too many fields): answered as the
        # same refusal of a webhook's body is (gateway.forms).
        exc = invalid_form(exc.__cause__)
    if isinstance(exc, GatewayError):
        return exc.status, exc.slug, exc.title, exc.detail, exc.reason
    if isinstance(exc, tornado.web.HTTPError):
        status = exc.status_code
        title = exc.reason or responses.get(status, "Unknown")
        detail = (
            exc.log_message % exc.args
            if exc.log_message and exc.args
            else (exc.log_message or title)
        )
        return status, f"http-{status}", title, detail, f"http_{status}"
    detail = "the gateway failed to handle this request; it has been logged"
    return 500, "internal", "Internal error", detail, "internal"


def problem_body(status: int, slug: str, title: str, detail: str, path: str, rid: str) -> bytes:
    """An RFC 9457 problem document, with the request's path and id."""
    return orjson.dumps(
        {
            "type": PROBLEM_BASE + slug,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
            "request_id": rid,
        }
    )


@dataclass
class Context:
    """What handlers are given (through ``initialize``); built once by ``gateway.app``."""

    settings: Settings
    store: RedisStore
    checkout: Checkout
    metrics: Metrics
    openapi: bytes
    pg: PgStore | None = None
    queue: QueueStats | None = None  # refreshed every second by gateway.background.monitor
    redis_durability: str = "unknown"
    draining: bool = False
    in_flight: int = 0


class BaseHandler(tornado.web.RequestHandler):
    name: ClassVar[str] = "unknown"
    requires_auth: ClassVar[bool] = True

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.error_reason = ""
        ctx.in_flight += 1  # every handler object ends in on_finish, which takes it back
        self.request_id = request_id(self.request.headers.get("X-Request-ID", ""))
        self.set_header("X-Request-ID", self.request_id)

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Cache-Control", "no-store")
        rid = getattr(self, "request_id", None)  # again after send_error's clear()
        if rid:
            self.set_header("X-Request-ID", rid)

    def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        limit = self.ctx.settings.max_body_bytes
        if (length is not None and length.isdigit() and int(length) > limit) or len(
            self.request.body
        ) > limit:
            raise BodyTooLarge(f"the body may be at most {limit} bytes", reason="body_too_large")
        if self.requires_auth:
            self._authenticate()

    def _authenticate(self) -> None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <api key>", reason="no_credentials")
        # Compare against every key, so timing does not tell which one nearly matched.
        ok = False
        for key in self.ctx.settings.api_keys:
            ok |= signatures_match(key, token)
        if not ok:
            raise Unauthorized("the API key is not valid", reason="bad_credentials")

    def json_body(self) -> dict[str, Any]:
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise UnsupportedMediaType("send Content-Type: application/json", reason="content_type")
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not valid JSON", reason="bad_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", reason="bad_json")
        return body

    def single_fields(self) -> dict[str, str]:
        """The query's fields, then the form's (Tornado has parsed both, as
        ``gateway.forms.form_fields`` parses a webhook's; a form field wins over a query
        field of the same name); one value each, UTF-8."""
        request = self.request
        sources = [request.query_arguments]
        if request.method == "POST" and request.body:
            require_form(request.headers.get("Content-Type", ""))
            sources.append(request.body_arguments)
        return fields_of(sources)

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status, slug, title, detail, self.error_reason = describe(exc)
        self.set_status(status)
        if status == 405:
            self.set_header(
                "Allow", ", ".join(m for m in self.SUPPORTED_METHODS if self._implements(m))
            )
        if 400 <= status < 500:
            self.ctx.metrics.bad_requests.labels(self.error_reason).inc()
        self.set_header("Content-Type", "application/problem+json")
        self.finish(problem_body(status, slug, title, detail, self.request.path, self.request_id))

    def _implements(self, method: str) -> bool:
        return getattr(type(self), method.lower()) is not getattr(
            tornado.web.RequestHandler, method.lower()
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GatewayError | tornado.web.HTTPError):
            return  # answered as problem+json and counted; not an error of the gateway
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self.ctx.in_flight -= 1


class NotFoundHandler(BaseHandler):
    """Answers every path no route matches."""

    name = "not_found"
    requires_auth = False

    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, "no route for %s", self.request.path)
