"""The return lane answers as Tornado answers, for requests hypothesis makes up.

Two gateways, each under a Redis prefix of its own: one with the return lane (the default),
one with ``GATEWAY_RETURN_LANE=false`` (Tornado's ``HTTPServer`` takes every connection).
For each example both prefixes are emptied, a payment is made on the first and copied to
the second (DUMP/RESTORE), so both hold the same state. The same bytes (one to three
requests, and sometimes a last ``Connection: close`` request) go to both, cut at the same
places. The answers (status, headers and body; the Date and a request id made up by the
gateway aside), their number, whether the connection was closed, and the state each
gateway left (timestamps aside) must be the same. And the lane parses a request's head
once, however its bytes are cut. (One difference is the lane's on purpose: nothing is sent
after a request that says ``Connection: close``; see the test.)

The requests start from an ordinary signed return and change a few things in it: the
method, the target, the version, the Host, the framing (Content-Length, chunked), a header
given twice or folded, the line endings, the body. ``GATEWAY_LANE_EXAMPLES`` sets how many
examples a run makes (default 120, derandomised so that CI repeats itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from handlers import return_lane
from tests import payu_sign
from tests.conftest import PAYU_SALT, REDIS_URL, Client, drop_keys, open_gateway
from tests.test_return_lane import port_of

EXAMPLES = int(os.environ.get("GATEWAY_LANE_EXAMPLES") or 120)
GENERATED_ID = re.compile(r"^[0-9a-f]{16}$")  # handlers.base.request_id's own ids
READ_S = 1.0  # how long an answer may take before the connection counts as silent
CLOSE_S = 0.25  # how long to wait, after the answers, for the server to close

HOSTS_GOOD = ["127.0.0.1", "127.0.0.1:8888", "gateway.example", "[::1]:8888", "a-b.c"]
HOSTS_BAD = [
    "a b",
    "a@b",
    "a/b",
    "a,b",
    "a\\b",
    'a"b',
    "a{b",
    "a<b>",
    "a?b",
    "a#b",
    "a%zz",
    "é.example",
    "a\tb",
    "",
]
TARGETS = [
    "/v1/payments/payu/return",
    "/v1/payments/razorpay/return",
    "/v1/payments/nope/return",
    "/v1/payments/PAYU/return",
    "/v1/payments/payu/return/",
    "/v1/payments/payu/return%2F",
    "//v1/payments/payu/return",
    "/v1/payments/payu/webhook",
    "/healthz",
    "/v1/payments/payu/return?a=1",
    "/v1/payments/payu/return?",
    "/v1/payments/payu/return?status=success",
    "/v1/payments/payu/return?a=%FF",
    "/v1/payments/payu/return?txnid=x&txnid=y",
    "*",
    "http://127.0.0.1/v1/payments/payu/return",
]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded; charset=UTF-8",
    "Application/X-WWW-Form-Urlencoded",
    "application/x-www-form-urlencodedx",
    "application/json",
    "multipart/form-data; boundary=x",
    "text/plain",
    "",
]
NAMES = ["X-Thing", "Accept", "User-Agent", "Cookie", "Referer", "X-Forwarded-For", "Origin"]
VALUES = ["1", "a b", " padded ", "tab\tinside", "obs\x80text", "ctl\x01char", "", "x" * 300]

# One change each to an ordinary return; a request gets none, one, two or three of them.
CHANGES = [
    "method",
    "target",
    "version",
    "host",
    "no_host",
    "host_twice",
    "content_type",
    "length",
    "length_twice",
    "chunked",
    "request_id",
    "connection",
    "extra_header",
    "folded",
    "bare_lf",
    "body",
    "leading_crlf",
    "expect",
]


@dataclasses.dataclass
class Recipe:
    """What one request is made of, before the payment it is for is known."""

    method: str = "POST"
    target: str = "/v1/payments/payu/return"
    version: str = "HTTP/1.1"
    hosts: tuple[str, ...] = ("127.0.0.1",)
    content_type: str | None = "application/x-www-form-urlencoded"
    length: str = "right"  # right, absent, more, less, twice_same, twice_other, spaced, zeros
    chunked: bool = False
    request_id: tuple[str, ...] = ()
    connection: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    folded: bool = False
    eol: str = "crlf"  # crlf, lf, mixed
    body: str = "success"  # success, failure, tampered, junk, empty, not_utf8, non_ascii, query
    leading_crlf: bool = False
    expect: bool = False


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    r = Recipe()
    for change in draw(st.lists(st.sampled_from(CHANGES), max_size=3, unique=True)):
        if change == "method":
            r.method = draw(st.sampled_from(["GET", "PUT", "DELETE", "OPTIONS", "post", "PATCH"]))
        elif change == "target":
            r.target = draw(st.sampled_from(TARGETS))
        elif change == "version":
            r.version = draw(st.sampled_from(["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.10"]))
        elif change == "host":
            r.hosts = (
                draw(st.sampled_from(([] if os.environ.get("NOHOST") else HOSTS_BAD) + HOSTS_GOOD)),
            )
        elif change == "no_host":
            r.hosts = ()
        elif change == "host_twice":
            r.hosts = (r.hosts or ("127.0.0.1",)) + (draw(st.sampled_from(HOSTS_GOOD)),)
        elif change == "content_type":
            ctype = draw(st.sampled_from([*CONTENT_TYPES, None]))
            r.content_type = ctype
        elif change == "length":
            r.length = draw(st.sampled_from(["absent", "more", "less", "spaced", "zeros", "plus"]))
        elif change == "length_twice":
            r.length = draw(st.sampled_from(["twice_same", "twice_other", "list"]))
        elif change == "chunked":
            r.chunked = True
        elif change == "request_id":
            r.request_id = draw(
                st.sampled_from([("given-1",), ("bad id!",), ("one", "two"), ("x" * 200,)])
            )
        elif change == "connection":
            r.connection = draw(st.sampled_from(["close", "Close", "keep-alive", "upgrade"]))
        elif change == "extra_header":
            r.extra = (
                (draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))),
                *r.extra,
            )
        elif change == "folded":
            r.folded = True
        elif change == "bare_lf":
            r.eol = draw(st.sampled_from(["lf", "mixed"]))
        elif change == "body":
            r.body = draw(
                st.sampled_from(
                    ["failure", "tampered", "junk", "empty", "not_utf8", "non_ascii", "query"]
                )
            )
        elif change == "leading_crlf":
            r.leading_crlf = True
        elif change == "expect":
            r.expect = True
    return r


def form_body(kind: str, payment: dict[str, Any]) -> bytes:
    fields = payment["redirect"]["fields"]
    if kind in ("success", "query"):
        form = payu_sign.response_form(fields, "success", PAYU_SALT)
    elif kind == "failure":
        form = payu_sign.response_form(fields, "failure", PAYU_SALT)
    elif kind == "tampered":
        form = payu_sign.response_form(fields, "success", PAYU_SALT, hash="0" * 128)
    elif kind == "junk":
        return b"a=1&b=2&c"
    elif kind == "empty":
        return b""
    elif kind == "not_utf8":
        form = payu_sign.response_form(fields, "success", PAYU_SALT)
        return urllib.parse.urlencode(form).encode() + b"&note=%FF"
    else:  # non_ascii: raw bytes above 0x7f in the body
        form = payu_sign.response_form(fields, "success", PAYU_SALT)
        return urllib.parse.urlencode(form).encode() + "&note=é".encode()
    return urllib.parse.urlencode(form).encode()


def render(r: Recipe, payment: dict[str, Any], line_ends: list[bool]) -> bytes:
    """The request's bytes; ``line_ends`` picks CRLF (True) or LF per line for 'mixed'."""
    body = form_body(r.body, payment)
    target = r.target
    if r.body == "query":
        sep = "&" if "?" in target else "?"
        target, body = f"{target}{sep}{body.decode()}", b""
    lines = [f"{r.method} {target} {r.version}"]
    lines += [f"Host: {host}" for host in r.hosts]
    if r.content_type is not None:
        lines.append(f"Content-Type: {r.content_type}")
    framed = body
    if r.chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        n = len(body)
        length = {
            "right": [str(n)],
            "absent": [],
            "more": [str(n + 1)],
            "less": [str(max(n - 1, 0))],
            "spaced": [f"  {n}  "],
            "zeros": [f"000{n}"],
            "plus": [f"+{n}"],
            "twice_same": [str(n), str(n)],
            "twice_other": [str(n), str(max(n - 10, 0))],
            "list": [f"{n}, {n}"],
        }[r.length]
        lines += [f"Content-Length: {value}" for value in length]
    lines += [f"X-Request-ID: {rid}" for rid in r.request_id]
    if r.connection is not None:
        lines.append(f"Connection: {r.connection}")
    if r.expect:
        lines.append("Expect: 100-continue")
    for name, value in r.extra:
        lines.append(f"{name}: {value}")
    if r.folded:
        lines.insert(2, " folded-on")
    ends = {"crlf": [True] * (len(lines) + 1), "lf": [False] * (len(lines) + 1)}.get(
        r.eol, line_ends + [True] * (len(lines) + 1 - len(line_ends))
    )
    head = "".join(
        line + ("\r\n" if crlf else "\n") for line, crlf in zip(lines, ends, strict=False)
    )
    head += "\r\n" if ends[len(lines)] else "\n"
    return (b"\r\n" if r.leading_crlf else b"") + head.encode("utf-8") + framed


CLOSER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@dataclasses.dataclass
class Exchange:
    recipes: list[Recipe]
    closer: bool
    cuts: list[int]  # where the bytes are cut into segments (per mille of their length)
    gap_ms: int
    line_ends: list[bool]


exchanges = st.builds(
    Exchange,
    recipes=st.lists(recipes(), min_size=1, max_size=3),
    closer=st.booleans(),
    cuts=st.lists(st.integers(1, 999), max_size=6),
    gap_ms=st.sampled_from([0, 0, 1, 3]),
    line_ends=st.lists(st.booleans(), min_size=12, max_size=12),
)


def split_answer(data: bytes) -> tuple[tuple[Any, ...], bytes] | None:
    """The first whole answer in ``data``, normalised (status line, headers in order with
    the Date aside and a made-up request id as '<made>', body with JSON parsed and its
    made-up request id likewise), and the bytes after it; None while it is incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    headers = []
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        value = value.strip()
        if name == "Date":
            continue
        if name.lower() == "content-length":
            length = int(value)
        if name.lower() == "x-request-id" and GENERATED_ID.match(value):
            value = "<made>"
        headers.append((name, value))
    if len(data) < end + 4 + length:
        return None
    body: Any = data[end + 4 : end + 4 + length]
    if body.startswith(b"{"):
        body = orjson.loads(body)
        if GENERATED_ID.match(str(body.get("request_id", ""))):
            body["request_id"] = "<made>"
    return (lines[0], tuple(headers), body), data[end + 4 + length :]


async def converse(port: int, data: bytes, cuts: list[int], gap_ms: int, expect: int) -> Any:
    """Send ``data`` cut into segments, read the answers (any that come within CLOSE_S once
    ``expect`` have), and tell how the connection ended: 'closed' (by the server), 'reset' (it
    closed with bytes of ours unread, and the kernel's reset may have dropped what it had
    received for us), 'silent' (fewer than ``expect`` answers, and none for READ_S) or
    'open'. A raw socket, so that a write the server refused does not stop the reading of
    what it had answered."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    points = sorted({len(data) * cut // 1000 for cut in cuts} | {0, len(data)})
    answers: list[Any] = []
    received = b""
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        try:
            for start, end in itertools.pairwise(points):
                await loop.sock_sendall(sock, data[start:end])
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
        except OSError:
            pass  # the server closed before the last bytes (a 400 closes): read what it said
        while True:
            whole = split_answer(received)
            if whole is not None:
                answers.append(whole[0])
                received = whole[1]
                continue
            wait = READ_S if len(answers) < expect else CLOSE_S
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
            except TimeoutError:
                state = "silent" if len(answers) < expect else "open"
                break
            except OSError:
                # A reset: the server closed with bytes of ours unread (a 400 closes), and
                # the kernel may drop what it had received for us: the answers are cut short
                state = "reset"
                break
            if not chunk:
                state = "closed"
                break
            received += chunk
        if received:
            answers.append(("incomplete", received))
        return answers, state
    finally:
        sock.close()


async def state_of(r: redis.asyncio.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` and what it holds, timestamps and stream ids aside."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if not k.endswith("_at")}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    out: dict[str, Any] = {}
    async for raw in r.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = (await r.type(key)).decode()
        if kind == "hash":
            value: Any = {k.decode(): v.decode() for k, v in (await r.hgetall(key)).items()}
            value = plain(value)
        elif kind == "stream":
            value = []
            for _id, fields in await r.xrange(key):
                entry = {}
                for k, v in fields.items():
                    name = k.decode()
                    if name == "at":
                        continue
                    text = v.decode()
                    entry[name] = plain(orjson.loads(text)) if text.startswith("{") else text
                value.append(entry)
        elif kind == "string":
            value = (await r.get(key)).decode()
        else:
            value = kind
        out[key[len(prefix) :]] = (kind, value, await r.ttl(key) > 0)
    return out


async def copy_keys(r: redis.asyncio.Redis, source: str, target: str) -> None:
    async for raw in r.scan_iter(match=f"{source}:*", count=1000):
        key = raw.decode()
        dumped = await r.dump(key)
        ttl = max(await r.pttl(key), 0)
        await r.restore(target + key[len(source) :], ttl, dumped, replace=True)


@pytest.fixture
async def twins(settings: Any) -> AsyncIterator[tuple[Client, Client, redis.asyncio.Redis]]:
    lane, lane_server = await open_gateway(settings)
    routed_settings = dataclasses.replace(
        settings, return_lane=False, redis_prefix=settings.redis_prefix + "-t"
    )
    routed, routed_server = await open_gateway(routed_settings)
    raw = redis.asyncio.Redis.from_url(REDIS_URL)
    yield lane, routed, raw
    for client, server in ((lane, lane_server), (routed, routed_server)):
        server.stop()
        await server.close_all_connections()
        await client.close()
        await client.store.close()
    await raw.aclose()
    for prefix in (settings.redis_prefix, routed_settings.redis_prefix):
        await drop_keys(REDIS_URL, prefix)


class Counted:
    """A function, with a count of its calls."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.function(*args)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("GATEWAY_LANE_EXAMPLES") is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
@given(exchange=exchanges)
async def test_the_lane_answers_generated_requests_as_tornado_does(twins, monkeypatch, exchange):
    lane, routed, raw = twins
    lane_prefix, routed_prefix = lane.keys.prefix, routed.keys.prefix
    for prefix in (lane_prefix, routed_prefix):
        await drop_keys(REDIS_URL, prefix)
    cart = await lane.cart_with_items(items=1)
    payment = await lane.start(cart["cart_id"])
    await copy_keys(raw, lane_prefix, routed_prefix)
    sent = exchange.recipes
    for i, recipe in enumerate(sent):
        # Nothing after a request that says Connection: close: the lane, as RFC 9112 says
        # (9.6: the server "MUST NOT process any further requests"), reads no further;
        # Tornado 6.6 settles a return pipelined after it, and never answers it.
        if (recipe.connection or "").lower() == "close":
            sent = sent[: i + 1]
            break
    closer = exchange.closer and sent == exchange.recipes
    data = b"".join(render(r, payment, exchange.line_ends) for r in sent)
    if closer:
        data += CLOSER
    note(f"bytes: {data!r}")
    expect = len(sent) + closer
    parses = Counted(return_lane.head_of)
    monkeypatch.setattr(return_lane, "head_of", parses)
    by_lane = await converse(port_of(lane), data, exchange.cuts, exchange.gap_ms, expect)
    monkeypatch.setattr(return_lane, "head_of", parses.function)
    by_tornado = await converse(port_of(routed), data, exchange.cuts, exchange.gap_ms, expect)
    if "reset" in (by_lane[1], by_tornado[1]):  # both closed; a reset may lose the last
        n = min(len(by_lane[0]), len(by_tornado[0]))
        assert by_lane[0][:n] == by_tornado[0][:n]
        assert by_lane[1] in ("reset", "closed") and by_tornado[1] in ("reset", "closed")
    else:
        assert by_lane == by_tornado
    assert await state_of(raw, lane_prefix) == await state_of(raw, routed_prefix)
    # the lane reads a head once, however its bytes were cut
    assert parses.calls <= expect, f"{parses.calls} head parses for {expect} requests"
