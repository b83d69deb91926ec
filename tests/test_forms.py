"""Forms: PayU's webhook reads its form exactly as the return reads its own (one parser,
one limit on the number of fields, the same errors), on both return paths."""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson

from tests import payu_sign
from tests.conftest import PAYU_SALT
from tests.test_return_errors import snapshot

RETURN, WEBHOOK = "/v1/payments/payu/return", "/v1/payments/payu/webhook"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LIMIT = 1000  # fields in a form: Tornado's limit on the return's (gateway.forms.MAX_FIELDS)


def signed_body(payment: dict[str, Any], extra: bytes = b"") -> bytes:
    """A genuinely signed PayU success, with ``extra`` fields (not covered by the hash)."""
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    return urllib.parse.urlencode(form).encode() + extra


async def post(gw: Any, path: str, body: bytes, ctype: str = FORM["Content-Type"]) -> Any:
    return await gw.fetch("POST", path, body=body, headers={"Content-Type": ctype}, auth=False)


def problem_of(resp: Any) -> tuple[int, str, str, str]:
    """What a refusal says, without its path and request id."""
    assert resp.headers["Content-Type"] == "application/problem+json", (resp.code, resp.body)
    doc = orjson.loads(resp.body)
    assert doc["status"] == resp.code
    return resp.code, doc["type"], doc["title"], doc["detail"]


async def refused_alike(gw: Any, extra: bytes, ctype: str = FORM["Content-Type"]) -> Any:
    """The same signed body, with ``extra``, to the return and to the webhook: both refuse it
    with the same problem, and nothing changes."""
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    before = await snapshot(gw, cart["cart_id"], payment["txnid"])
    body = signed_body(payment, extra)
    by_return = problem_of(await post(gw, RETURN, body, ctype))
    by_webhook = problem_of(await post(gw, WEBHOOK, body, ctype))
    assert by_webhook == by_return
    assert await snapshot(gw, cart["cart_id"], payment["txnid"]) == before
    return by_return


async def test_a_field_not_utf8_is_refused_by_the_webhook_as_by_the_return(gw_either):
    status, problem_type, _, detail = await refused_alike(gw_either, b"&note=%FF")
    assert status == 400 and problem_type.endswith("/bad-request"), detail
    assert await gw_either.metric("gateway_bad_requests_total", reason="bad_form") == 2


async def test_a_field_twice_is_refused_by_the_webhook_as_by_the_return(gw_either):
    status, _, _, detail = await refused_alike(gw_either, b"&udf5=again")
    assert status == 400 and "twice" in detail


async def test_more_fields_than_the_limit_are_refused_alike(gw_either):
    extra = b"".join(b"&f%d=1" % i for i in range(LIMIT))
    status, problem_type, _, detail = await refused_alike(gw_either, extra)
    assert status == 400 and problem_type.endswith("/bad-request"), detail
    assert "fields" in detail
    assert await gw_either.metric("gateway_bad_requests_total", reason="bad_form") == 2


async def test_a_webhook_that_is_not_a_form_is_refused_as_the_return(gw_either):
    status, _, _, detail = await refused_alike(gw_either, b"", ctype="application/json")
    assert status == 415 and "form" in detail


async def test_150_fields_are_taken_by_the_webhook_as_by_the_return(gw_either):
    """Up to the limit, extra fields are taken by both: the webhook applies the payment, the
    return then replays it."""
    gw = gw_either
    extra = b"".join(b"&f%d=%d" % (i, i) for i in range(140))
    for first, second in ((WEBHOOK, RETURN), (RETURN, WEBHOOK)):
        cart = await gw.cart_with_items()
        payment = await gw.start(cart["cart_id"])
        body = signed_body(payment, extra)
        assert body.count(b"&") + 1 >= 150
        one = await post(gw, first, body)
        two = await post(gw, second, body)
        webhook = orjson.loads((one if first == WEBHOOK else two).body)
        returned = two if first == WEBHOOK else one
        assert webhook["status"] == "SUCCESS" and webhook["booking_id"], webhook
        assert returned.code == 303 and "status=success" in returned.headers["Location"]
        assert webhook["booking_id"] in returned.headers["Location"]
        assert webhook["applied"] is (first == WEBHOOK)
