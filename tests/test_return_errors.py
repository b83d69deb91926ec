"""Bad returns and webhooks: the right 4xx or a failure redirect, and nothing changed."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from tests import payu_sign
from tests.conftest import FAILURE_URL, PAYU_SALT, SUCCESS_URL


async def snapshot(gw: Any, cart_id: str, txnid: str) -> tuple[Any, ...]:
    return (
        await gw.redis.hgetall(gw.keys.cart(cart_id)),
        await gw.redis.hgetall(gw.keys.payment(txnid)),
        await gw.redis.exists(gw.keys.booking("b" + cart_id[1:])),
        await gw.redis.xlen(gw.keys.stream_of(cart_id)),
    )


@pytest.fixture
async def open_payment(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    before = await snapshot(gw, cart["cart_id"], payment["txnid"])
    yield cart["cart_id"], payment, before
    assert await snapshot(gw, cart["cart_id"], payment["txnid"]) == before, "state changed"


def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.code == status, (resp.code, resp.body)
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = orjson.loads(resp.body)
    assert body["status"] == status and body["title"] and body["type"] and body["detail"]
    return dict(body)


def failure_reason(resp: Any) -> str:
    assert resp.code == 303, (resp.code, resp.body)
    loc = resp.headers["Location"]
    assert loc.startswith(FAILURE_URL + "?")
    q = dict(parse_qsl(urlsplit(loc).query))
    assert q["status"] == "failed"
    return q["reason"]


async def test_tampered_signature(gw, open_payment):
    _, payment, _ = open_payment
    resp = await gw.payu_return(payment, hash="0" * 128)
    assert failure_reason(resp) == "bad_signature"


async def test_signed_with_wrong_salt(gw, open_payment):
    _, payment, _ = open_payment
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", "not-the-salt")
    resp = await gw.fetch("POST", "/v1/payments/payu/return", form=form, auth=False)
    assert failure_reason(resp) == "bad_signature"


async def test_amount_changed_after_signing(gw, open_payment):
    _, payment, _ = open_payment
    good = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    good["amount"] = "1.00"
    resp = await gw.fetch("POST", "/v1/payments/payu/return", form=good, auth=False)
    assert failure_reason(resp) == "bad_signature"


async def test_wrong_amount_correctly_signed(gw, open_payment):
    _, payment, _ = open_payment
    resp = await gw.payu_return(payment, amount="1.00")
    assert failure_reason(resp) == "amount_mismatch"
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert 'gateway_notice_mismatches_total{field="amount",provider="payu"} 1.0' in metrics


async def test_wrong_key(gw, open_payment):
    _, payment, _ = open_payment
    resp = await gw.payu_return(payment, key="someone-else")
    assert failure_reason(resp) == "bad_signature"


async def test_unknown_txnid(gw, open_payment):
    _, payment, _ = open_payment
    resp = await gw.payu_return(payment, txnid="t00aaaaaaaaaaaaaaaaaaaa")
    assert problem(resp, 400)["detail"] == "unknown txnid t00aaaaaaaaaaaaaaaaaaaa"


async def test_malformed_txnid(gw, open_payment):
    _, payment, _ = open_payment
    resp = await gw.payu_return(payment, txnid="../../etc/passwd")
    assert problem(resp, 400)["detail"] == "txnid is malformed"


@pytest.mark.parametrize("field", ["txnid", "hash", "status", "amount", "key"])
async def test_missing_field(gw, open_payment, field):
    _, payment, _ = open_payment
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    del form[field]
    resp = await gw.fetch("POST", "/v1/payments/payu/return", form=form, auth=False)
    assert field in problem(resp, 400)["detail"]


@pytest.mark.parametrize(
    "body,ctype,status",
    [
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded", 400),
        (b"amount=1&amount=2", "application/x-www-form-urlencoded", 400),
        (b'{"txnid": "x"}', "application/json", 415),
        (b"", "application/x-www-form-urlencoded", 400),
        (
            b"status=success&txnid=t&amount=abc&hash=h&key=k",
            "application/x-www-form-urlencoded",
            400,
        ),
    ],
)
async def test_junk_bodies(gw, open_payment, body, ctype, status):
    resp = await gw.fetch(
        "POST", "/v1/payments/payu/return", body=body, headers={"Content-Type": ctype}, auth=False
    )
    problem(resp, status)


async def test_oversized_body(gw, open_payment):
    _, payment, _ = open_payment
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    form["udf5"] = "x" * 40_000
    resp = await gw.fetch("POST", "/v1/payments/payu/return", form=form, auth=False)
    problem(resp, 413)


async def test_wrong_method(gw, open_payment):
    resp = await gw.fetch("PUT", "/v1/payments/payu/return", body=b"", auth=False)
    problem(resp, 405)
    resp = await gw.fetch("GET", "/v1/payments/payu/webhook", auth=False)
    problem(resp, 405)


async def test_unknown_provider(gw, open_payment):
    _, payment, _ = open_payment
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    resp = await gw.fetch("POST", "/v1/payments/stripe/return", form=form, auth=False)
    problem(resp, 404)


async def test_webhook_bad_signature_is_401(gw, open_payment):
    _, payment, _ = open_payment
    form = payu_sign.response_form(
        payment["redirect"]["fields"], "success", PAYU_SALT, hash="ab" * 64
    )
    resp = await gw.fetch("POST", "/v1/payments/payu/webhook", form=form, auth=False)
    problem(resp, 401)
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert 'gateway_signature_failures_total{channel="webhook",provider="payu"} 1.0' in metrics


@pytest.mark.parametrize("status", ["success", "failure", "bad-signature"])
async def test_redirect_target_never_from_request(gw, status):
    """surl/furl, next=, redirect= or a Host header in the request do not move the redirect."""
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    evil = "https://evil.example/"
    form = payu_sign.response_form(
        payment["redirect"]["fields"],
        "success" if status == "bad-signature" else status,
        PAYU_SALT,
        surl=evil,
        furl=evil,
        next=evil,
    )
    if status == "bad-signature":
        form["hash"] = "00" * 64
    resp = await gw.fetch(
        "POST",
        f"/v1/payments/payu/return?redirect={evil}&url={evil}",
        form=form,
        auth=False,
        headers={"Host": "evil.example", "Referer": evil, "X-Forwarded-Host": "evil.example"},
    )
    assert resp.code == 303
    expected = SUCCESS_URL if status == "success" else FAILURE_URL
    assert resp.headers["Location"].startswith(expected)
    assert "evil" not in resp.headers["Location"]


async def test_redis_down_is_a_503_and_the_gateway_recovers(make_gw, own_redis):
    """Redis killed under a running gateway: every call answers 503 problem+json, nothing
    half-done; Redis back (empty, its scripts gone): the gateway connects again and loads
    them by itself."""
    proc, port = own_redis()
    gw = await make_gw(redis_url=f"redis://127.0.0.1:{port}/0")
    cart = await gw.cart_with_items(items=1)
    payment = await gw.start(cart["cart_id"])
    proc.kill()
    proc.wait(10)
    for resp in (
        await gw.payu_return(payment),
        await gw.fetch("GET", f"/v1/carts/{cart['cart_id']}"),
    ):
        assert resp.code == 503, resp.body
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = orjson.loads(resp.body)
        assert problem["status"] == 503 and "Redis did not answer" in problem["detail"]
    own_redis(port=port)
    again = await gw.cart_with_items(items=1)
    payment = await gw.start(again["cart_id"])
    done = await gw.payu_return(payment)
    assert done.code == 303 and "status=success" in done.headers["Location"]


@pytest.mark.parametrize(
    "amount",
    [
        "1499.00\n",
        "\u0661\u0664\u0669\u0669.\u0660\u0660",
        "1499.00\r",
        "\uff11\uff14\uff19\uff19.\uff10\uff10",
        "1499.0\u0660",
    ],
    ids=["trailing-newline", "arabic-indic", "trailing-cr", "fullwidth", "one-arabic-digit"],
)
async def test_a_signed_amount_in_other_digits_does_not_settle(gw_either, amount):
    """A return signed over an amount that is the payment's in Unicode digits or with a line
    ending (1499.00 is the cart's total) is unparseable input: 400 bad_amount, nothing
    changes."""
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    assert payment["redirect"]["fields"]["amount"] == "1499.00"
    before = await snapshot(gw, cart["cart_id"], payment["txnid"])
    for channel in ("return", "webhook"):
        form = payu_sign.response_form(
            payment["redirect"]["fields"], "success", PAYU_SALT, amount=amount
        )
        resp = await gw.fetch("POST", f"/v1/payments/payu/{channel}", form=form, auth=False)
        assert "not a decimal amount" in problem(resp, 400)["detail"]
    assert await snapshot(gw, cart["cart_id"], payment["txnid"]) == before
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"
    assert await gw.metric("gateway_bad_requests_total", reason="bad_amount") == 2


def test_parse_decimal_takes_ascii_digits_only():
    from gateway.money import parse_decimal

    assert parse_decimal("1499.00", "INR") == 149900
    assert parse_decimal("0.5", "INR") == 50
    for text in (
        "1499.00\n",
        "1499.00\r\n",
        "\n1499.00",
        " 1499.00",
        "\u0661\u0664\u0669\u0669",
        "1499.001",
        "",
    ):
        assert parse_decimal(text, "INR") is None, repr(text)
