"""The return lane (handlers/return_lane.py) answers as Tornado's ReturnHandler does.

Two gateways share one Redis prefix: one with the lane (the default: ``LaneServer`` takes
the connections and answers ordinary returns itself), one with ``GATEWAY_RETURN_LANE=false``
(Tornado's ``HTTPServer`` takes them and routes the return to ``ReturnHandler``). The same
requests go to both and must get the same status, headers and body, on the wire too, and
requests the lane does not take must reach Tornado whole. Successes are compared through
their replays: a success sent to one and replayed to the other redirects to the same
signed target, and leaves one booking.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.signing import verify_query
from handlers import connections, return_lane
from handlers.lane_head import ascii_fields
from tests import payu_sign
from tests.conftest import API_KEY, PAYU_SALT, RETURN_SECRET, Client, drop_keys, open_gateway

RETURN = "/v1/payments/payu/return"
UNCOMPARED = {"Date"}  # the clock's


@pytest.fixture
async def pair(settings: Any) -> AsyncIterator[tuple[Client, Client]]:
    lane, lane_server = await open_gateway(settings)
    routed, routed_server = await open_gateway(dataclasses.replace(settings, return_lane=False))
    yield lane, routed
    for client, server in ((lane, lane_server), (routed, routed_server)):
        server.stop()
        await server.close_all_connections()
        await client.close()
        await client.store.close()
    await drop_keys(settings.redis_url, settings.redis_prefix)


def answer(resp: Any) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in resp.headers.get_all() if k not in UNCOMPARED}
    body = orjson.loads(resp.body) if resp.body else b""
    return resp.code, headers, body


async def both(pair: tuple[Client, Client], method: str, path: str, **kw: Any) -> Any:
    kw.setdefault("headers", {})["X-Request-ID"] = "parity-1"
    lane, routed = pair
    a = answer(await lane.fetch(method, path, auth=False, **kw))
    b = answer(await routed.fetch(method, path, auth=False, **kw))
    assert a == b
    return a


async def open_payment(gw: Client) -> dict[str, Any]:
    cart = await gw.cart_with_items()
    return await gw.start(cart["cart_id"])


def signed_form(payment: dict[str, Any], status: str = "success", **over: str) -> bytes:
    form = payu_sign.response_form(payment["redirect"]["fields"], status, PAYU_SALT, **over)
    return urllib.parse.urlencode(form).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_success_and_its_replay_redirect_alike(pair):
    lane, routed = pair
    for first, second in ((lane, routed), (routed, lane)):
        payment = await open_payment(lane)
        body = signed_form(payment)
        one = answer(await first.fetch("POST", RETURN, body=body, headers=dict(FORM), auth=False))
        two = answer(await second.fetch("POST", RETURN, body=body, headers=dict(FORM), auth=False))
        assert one[0] == two[0] == 303
        drop = {"X-Request-Id"}  # made per request when the caller sends none
        assert one[1]["X-Request-Id"] and two[1]["X-Request-Id"]
        assert {k: v for k, v in one[1].items() if k not in drop} == {
            k: v for k, v in two[1].items() if k not in drop
        }
        location = one[1]["Location"]
        assert verify_query(urllib.parse.urlsplit(location).query, RETURN_SECRET.encode())
        assert "status=success" in location and f"txnid={payment['txnid']}" in location
        paid = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
        assert paid["status"] == "SUCCESS" and paid["booking_id"]
        booking = await lane.json("GET", f"/v1/bookings/{paid['booking_id']}")
        assert booking["status"] == "CONFIRMED"
        cart = await lane.json("GET", f"/v1/carts/{paid['cart_id']}")
        assert cart["status"] == "CONVERTED"


async def test_failures_and_bad_requests_answer_alike(pair):
    lane, _ = pair
    payment = await open_payment(lane)
    fields = dict(urllib.parse.parse_qsl(signed_form(payment).decode()))
    cases: list[tuple[str, dict[str, Any], int]] = [
        # a notice that does not hold: the failure page, signed
        ("tampered", {"body": signed_form(payment, hash="0" * 128), "headers": dict(FORM)}, 303),
        (
            "unknown txnid",
            {"body": signed_form(payment, txnid="t" + "9" * 31), "headers": dict(FORM)},
            400,
        ),
        ("missing field", {"body": b"status=success&txnid=x", "headers": dict(FORM)}, 400),
        (
            "field twice",
            {"body": signed_form(payment) + b"&status=failure", "headers": dict(FORM)},
            400,
        ),
        ("not UTF-8", {"body": signed_form(payment) + b"&note=%FF", "headers": dict(FORM)}, 400),
        (
            "not a form",
            {"body": orjson.dumps(fields), "headers": {"Content-Type": "application/json"}},
            415,
        ),
        ("too large", {"body": b"a=" + b"x" * (2 * 1024 * 64), "headers": dict(FORM)}, 413),
        ("no body", {"body": b"", "headers": dict(FORM)}, 400),
    ]
    for name, kw, status in cases:
        code, _, _ = await both(pair, "POST", RETURN, **kw)
        assert code == status, name
    code, headers, _ = await both(pair, "GET", RETURN + "?status=success")
    assert code == 400
    code, headers, _ = await both(pair, "PUT", RETURN, body=b"", headers=dict(FORM))
    assert code == 405 and headers["Allow"] == "GET, POST"
    code, _, _ = await both(pair, "POST", "/v1/payments/nope/return", body=b"", headers=dict(FORM))
    assert code == 404
    still = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
    assert still["status"] == "INITIATED"


def test_ascii_fields_reads_what_tornado_reads():
    """Where the lane's parser reads a form, it reads what Tornado's parser and
    ``fields_of`` read; where it declines, Tornado's routing answers instead."""
    from tornado.escape import parse_qs_bytes

    from handlers.base import fields_of

    for text in [
        "a=1&b=two+words&c=x%40y.z&d=&e",
        "&&a=1&",
        "name=%E2%82%AC+%26+%3D&k%20ey=v",
        "a=%zz&b=%4",  # invalid escapes pass through
    ]:
        assert ascii_fields(text) == fields_of([parse_qs_bytes(text, True)]), text
    for text in [
        "a=1&a=2",  # twice: Tornado's path answers 400
        "a=%FF",  # not UTF-8: 400
        "%C3%A9=1",  # a name that is not ASCII once unquoted (Tornado reads it as Latin-1)
        "é=1",  # not ASCII
        "a=1" + "&b=2" * 1000,  # more fields than Tornado takes
    ]:
        assert ascii_fields(text) is None, text


# -- on the wire: the lane's own connections (LaneServer) ---------------------------------

Answer = tuple[int, list[tuple[str, str]], bytes]


def port_of(client: Client) -> int:
    return int(client.base_url.rsplit(":", 1)[1])


def raw_return(body: bytes, *extra: str, version: str = "HTTP/1.1", path: str = RETURN) -> bytes:
    head = [
        f"POST {path} {version}",
        "Host: 127.0.0.1",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def raw_get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra]) + "\r\n\r\n").encode()


BAD_HOSTS = ["a b", "a@b", "a/b", "a,b", "a\\b", 'a"b', "a{b}", "a<b>", "a?b", "a#b"]
BAD_HOSTS += ["a%zz", "a\tb", "a^b", "a|b"]
MADE_ID = re.compile(rb"[0-9a-f]{16}")  # a request id the gateway made (handlers.base)


async def read_answer(reader: asyncio.StreamReader) -> Answer | None:
    """One answer as sent: status, headers in their order and spelling (Date left out),
    body; None when the connection closed first. A request id the gateway made up (when
    the caller sent none it could echo) reads '<made>'."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
    headers = [(n, "<made>" if MADE_ID.fullmatch(v.encode()) else v) for n, v in headers]
    length = int(dict(headers).get("Content-Length", "0"))
    body = MADE_ID.sub(b"<made>", await reader.readexactly(length))
    return int(lines[0].split(" ")[1]), [h for h in headers if h[0] != "Date"], body


async def exchange(
    client: Client, *pieces: bytes, answers: int, gap: float = 0.0
) -> tuple[list[Answer | None], bool]:
    """Send ``pieces`` on one connection (``gap`` seconds apart, each its own segment), read
    ``answers`` answers, and tell whether the server then closed the connection."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port_of(client)), 10
    )
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in pieces:
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), 10)
            if gap:
                await asyncio.sleep(gap)
        got = [await asyncio.wait_for(read_answer(reader), 10) for _ in range(answers)]
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
        return got, closed
    finally:
        writer.close()


async def test_answers_on_the_wire_are_tornados(pair):
    """Byte for byte (but the Date), the lane's answers are what Tornado sends, and requests
    the lane hands over get Tornado's own answers."""
    lane, routed = pair
    payment = await open_payment(lane)
    tampered = signed_form(payment, hash="0" * 128)
    paid = signed_form(payment)  # never accepted below: each case is refused or tampered
    unknown = signed_form(payment, txnid="t" + "9" * 31)
    rid = "X-Request-ID: wire-1"
    chunked = (
        (
            f"POST {RETURN} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{rid}\r\n\r\n"
            f"{len(tampered):x}\r\n"
        ).encode()
        + tampered
        + b"\r\n0\r\n\r\n"
    )
    cases: list[tuple[str, bytes]] = [
        ("tampered", raw_return(tampered, rid)),
        ("connection close", raw_return(tampered, rid, "Connection: close")),
        ("unknown txnid", raw_return(unknown, rid)),
        ("query only", raw_get(RETURN + "?status=success", rid)),
        ("chunked", chunked),
        ("HTTP/1.0", raw_return(tampered, rid, version="HTTP/1.0")),
        (
            "HTTP/1.0 keep-alive",
            raw_return(tampered, rid, "Connection: keep-alive", version="HTTP/1.0"),
        ),
        ("a header twice", raw_return(tampered, rid, "X-Thing: 1", "X-Thing: 2")),
        ("a folded header", raw_return(tampered, rid, "X-Thing: 1", " continued")),
        ("no Host", raw_return(tampered, rid).replace(b"Host: 127.0.0.1\r\n", b"")),
        ("a head too large", raw_return(tampered, rid, "X-Big: " + "b" * 70_000)),
        (
            "a length of 5,000 digits",
            raw_return(tampered, rid).replace(
                b"Content-Length: ", b"Content-Length: " + b"0" * 5000
            ),
        ),
        ("not HTTP", b"HELLO\r\n\r\n"),
        # a second Content-Length that the lane took as the only one split one request in two
        ("Content-Length twice", raw_return(paid, rid, "Content-Length: 10")),
        ("X-Request-ID twice", raw_return(tampered, rid, "X-Request-ID: wire-2")),
        # bare LF line ends (printf | nc health checks): Tornado answers at once
        ("bare LF health check", b"GET /healthz HTTP/1.1\nHost: x\n\n"),
        ("bare LF return", raw_return(tampered, rid).replace(b"\r\n", b"\n")),
        ("bare LF, then CRLF", raw_return(tampered, rid).replace(b"\r\n", b"\n", 1)),
    ]
    # heads about Tornado's limit (65,536 bytes, the blank line's CRLFs included)
    for size in (65_532, 65_535, 65_536, 65_537, 65_540):
        request = raw_return(tampered, rid, "X-Pad: ")
        end = request.index(b"\r\n\r\n") + 4
        request = request[: end - 4] + b"p" * (size - end) + request[end - 4 :]
        assert request.index(b"\r\n\r\n") + 4 == size
        cases.append((f"a head of {size} bytes", request))
    # Hosts Tornado refuses (400): the lane must not settle a return that names one
    for host in [*BAD_HOSTS, "é.example"]:
        request = raw_return(paid, rid).replace(b"Host: 127.0.0.1", f"Host: {host}".encode())
        cases.append((f"Host {host!r}", request))
    for name, request in cases:
        a = await exchange(lane, request, answers=1)
        b = await exchange(routed, request, answers=1)
        assert a == b, name
        assert a[0][0] is not None or "head" in name or name == "not HTTP", name
    (status, headers, _), *_ = (await exchange(lane, raw_return(tampered, rid), answers=1))[0]
    assert status == 303 and "reason=bad_signature" in dict(headers)["Location"]
    still = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
    assert still["status"] == "INITIATED"


async def test_pipelined_returns_then_a_route_on_one_connection(pair):
    """Two returns and a merchant call in one write: answered in order, the third by
    Tornado once the lane has handed the connection over."""
    lane, _ = pair
    one, two = await open_payment(lane), await open_payment(lane)
    auth = f"Authorization: Bearer {API_KEY}"
    got, closed = await exchange(
        lane,
        raw_return(signed_form(one))
        + raw_return(signed_form(two))
        + raw_get(f"/v1/payments/{one['txnid']}", auth),
        answers=3,
    )
    assert not closed
    (s1, h1, _), (s2, h2, _), (s3, _, body) = got  # type: ignore[misc]
    assert (s1, s2, s3) == (303, 303, 200)
    assert f"txnid={one['txnid']}" in dict(h1)["Location"]
    assert f"txnid={two['txnid']}" in dict(h2)["Location"]
    assert "status=success" in dict(h2)["Location"]
    assert orjson.loads(body)["status"] == "SUCCESS"
    paid = await lane.json("GET", f"/v1/payments/{two['txnid']}")
    assert paid["status"] == "SUCCESS"


async def test_a_return_arriving_in_pieces(pair):
    lane, _ = pair
    payment = await open_payment(lane)
    request = raw_return(signed_form(payment))
    pieces = [request[i : i + 7] for i in range(0, len(request), 7)]
    got, _ = await exchange(lane, *pieces, answers=1, gap=0.002)
    status, headers, _ = got[0]  # type: ignore[misc]
    assert status == 303 and "status=success" in dict(headers)["Location"]
    paid = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
    assert paid["status"] == "SUCCESS"


async def test_a_route_then_a_return_on_one_connection(pair):
    """Handed over by its first request, the connection's return is Tornado's to answer."""
    lane, _ = pair
    payment = await open_payment(lane)
    got, _ = await exchange(
        lane, raw_get("/healthz"), raw_return(signed_form(payment)), answers=2, gap=0.05
    )
    assert [answer[0] for answer in got if answer] == [200, 303]
    paid = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
    assert paid["status"] == "SUCCESS"


async def test_a_client_gone_before_its_answer_still_pays(pair):
    lane, _ = pair
    payment = await open_payment(lane)
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port_of(lane)), 10)
    writer.write(raw_return(signed_form(payment)))
    await asyncio.wait_for(writer.drain(), 10)
    writer.close()
    for _ in range(100):
        paid = await lane.json("GET", f"/v1/payments/{payment['txnid']}")
        if paid["status"] == "SUCCESS":
            break
        await asyncio.sleep(0.02)
    assert paid["status"] == "SUCCESS"
    got, _ = await exchange(lane, raw_get("/healthz"), answers=1)
    assert got[0] is not None and got[0][0] == 200


async def test_idle_and_half_sent_connections_are_closed(settings, monkeypatch):
    monkeypatch.setattr(connections, "TICK_S", 0.1)
    gw, server = await open_gateway(settings)
    assert isinstance(server, return_lane.LaneServer)
    server.idle_s = 0.3  # Tornado's idle_connection_timeout, as the server was given it
    try:
        idle = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port_of(gw)), 10)
        half = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port_of(gw)), 10)
        half[1].write(b"POST /v1/payments/payu/return HTTP/1.1\r\nHost: x\r\n")
        await asyncio.wait_for(half[1].drain(), 10)
        for reader, writer in (idle, half):
            assert await asyncio.wait_for(reader.read(1), 3) == b""
            writer.close()
    finally:
        server.stop()
        await server.close_all_connections()
        await gw.close()
        await gw.store.close()
        await drop_keys(settings.redis_url, settings.redis_prefix)


async def test_a_client_that_does_not_read_gets_no_more_answers(settings):
    """Pipelined returns from a client that never reads: the lane stops answering once its
    answers wait unread (as Tornado, which answers one at a time), so what it holds for
    that client stays bounded (asyncio's write buffer limit, 64 KiB, and one answer)."""
    gw, server = await open_gateway(settings)
    assert isinstance(server, return_lane.LaneServer)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    held = 0
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port_of(gw)))
        while not server.protocols:
            await asyncio.sleep(0.01)
        for conn in server.protocols:  # a small kernel buffer: what is held shows at once
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        request = raw_get(RETURN + "?txnid=nope") * 50
        deadline = loop.time() + 8
        while loop.time() < deadline:
            with contextlib.suppress(BlockingIOError):
                sock.send(request)
            await asyncio.sleep(0.002)
            for conn in server.protocols:
                held = max(held, conn.transport.get_write_buffer_size())
        assert held < 100_000, f"{held} bytes of answers held for a client that reads none"
    finally:
        sock.close()
        server.stop()
        await server.close_all_connections()
        await gw.close()
        await gw.store.close()
        await drop_keys(settings.redis_url, settings.redis_prefix)


async def test_shutting_down_does_not_wait_for_a_client_that_keeps_sending(settings):
    """close_all_connections ends a connection after the answer in hand, however many
    requests the client keeps pipelining."""
    gw, server = await open_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    stop = asyncio.Event()

    async def flood() -> None:
        request = raw_get(RETURN + "?txnid=nope") * 20
        while not stop.is_set():
            try:
                writer.write(request)
                await writer.drain()
                await reader.read(65536)
            except ConnectionError:
                return

    flooding = asyncio.create_task(flood())
    try:
        await asyncio.sleep(0.5)
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)
    finally:
        stop.set()
        writer.close()
        await asyncio.wait_for(flooding, 5)
        await gw.close()
        await gw.store.close()
        await drop_keys(settings.redis_url, settings.redis_prefix)
