"""The return lane (handlers/return_lane.py) answers as Tornado's ReturnHandler does.

Two gateways share one Redis prefix: one with the lane (the default), one with
``GATEWAY_RETURN_LANE=false``, which routes the return through ``ReturnHandler``. The same
requests go to both and must get the same status, headers and body. Successes are compared
through their replays: a success sent to one and replayed to the other redirects to the
same signed target, and leaves one booking.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.signing import verify_query
from handlers.return_lane import ascii_fields
from tests import payu_sign
from tests.conftest import PAYU_SALT, RETURN_SECRET, Client, drop_keys, open_gateway

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
