"""The whole lifecycle with Razorpay: an order on the stand-in Orders API, return and webhooks."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from tests.conftest import (
    FAILURE_URL,
    RZP_KEY_ID,
    RZP_SECRET,
    RZP_WEBHOOK_SECRET,
    SUCCESS_URL,
)
from tests.test_payu import check_sig


def rzp_sig(order_id: str, payment_id: str, secret: str = RZP_SECRET) -> str:
    return hmac.new(
        secret.encode(), f"{order_id}|{payment_id}".encode(), hashlib.sha256
    ).hexdigest()


def webhook(
    event: str,
    order_id: str,
    amount: int,
    currency: str = "INR",
    payment_id: str = "pay_ABC123",
    receipt: str | None = None,
) -> bytes:
    payment = {
        "id": payment_id,
        "entity": "payment",
        "amount": amount,
        "currency": currency,
        "order_id": order_id,
        "status": "captured" if event != "payment.failed" else "failed",
        "error_code": "BAD_REQUEST_ERROR" if event == "payment.failed" else None,
    }
    payload: dict[str, Any] = {"payment": {"entity": payment}}
    if event == "order.paid":
        payload["order"] = {
            "entity": {
                "id": order_id,
                "amount": amount,
                "amount_paid": amount,
                "currency": currency,
                "receipt": receipt,
                "status": "paid",
            }
        }
    return orjson.dumps(
        {"entity": "event", "event": event, "payload": payload, "created_at": 1764450000}
    )


async def razorpay_return(
    gw: Any, txnid: str, order_id: str, payment_id: str, secret: str = RZP_SECRET
) -> Any:
    """The browser back from Razorpay Checkout, signed with ``secret`` over the given order."""
    return await gw.fetch(
        "POST",
        f"/v1/payments/razorpay/return?txnid={txnid}",
        auth=False,
        form={
            "razorpay_payment_id": payment_id,
            "razorpay_order_id": order_id,
            "razorpay_signature": rzp_sig(order_id, payment_id, secret),
        },
    )


async def send_webhook(gw: Any, body: bytes, secret: str = RZP_WEBHOOK_SECRET) -> Any:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return await gw.fetch(
        "POST",
        "/v1/payments/razorpay/webhook",
        body=body,
        auth=False,
        headers={"Content-Type": "application/json", "X-Razorpay-Signature": sig},
    )


async def test_lifecycle_return(gw, razorpay_api):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    order = razorpay_api.orders[order_id]
    assert order["amount"] == payment["amount"] == cart["total_amount"]
    assert order["currency"] == "INR" and order["receipt"] == payment["txnid"]
    f = payment["redirect"]["fields"]
    assert f["key"] == RZP_KEY_ID and f["amount"] == str(cart["total_amount"])
    assert f["callback_url"] == (
        f"https://gateway.example/v1/payments/razorpay/return?txnid={payment['txnid']}"
    )
    assert "secret" not in orjson.dumps(payment).decode().lower()

    resp = await razorpay_return(gw, payment["txnid"], order_id, "pay_X1")
    assert resp.code == 303
    q = check_sig(resp.headers["Location"])
    assert resp.headers["Location"].startswith(SUCCESS_URL) and q["status"] == "success"
    cart = await gw.json("GET", f"/v1/carts/{cart['cart_id']}")
    assert cart["status"] == "CONVERTED"
    booking = await gw.json("GET", f"/v1/bookings/{q['booking_id']}")
    assert booking["txnid"] == payment["txnid"] and booking["status"] == "CONFIRMED"
    pay = await gw.json("GET", f"/v1/payments/{payment['txnid']}")
    assert pay["provider_order_id"] == order_id and pay["provider_payment_id"] == "pay_X1"
    events = [e["type"] for e in await gw.events()]
    assert events[-2:] == ["payment.initiated", "payment.succeeded"]

    # the webhook for the same capture, after the redirect: acknowledged, nothing new
    hook = orjson.loads(
        (await send_webhook(gw, webhook("payment.captured", order_id, cart["total_amount"]))).body
    )
    assert hook == {
        "txnid": payment["txnid"],
        "status": "SUCCESS",
        "booking_id": q["booking_id"],
        "refund_required": False,
        "applied": False,
    }


async def test_signature_uses_stored_order(gw):
    """A signature valid for another order (the attacker's own) does not pay this one."""
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    other = await gw.start((await gw.cart_with_items())["cart_id"], "razorpay")
    other_order = other["redirect"]["fields"]["order_id"]
    resp = await razorpay_return(gw, payment["txnid"], other_order, "pay_X1")
    assert resp.code == 303 and resp.headers["Location"].startswith(FAILURE_URL)
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"
    assert (await gw.json("GET", f"/v1/payments/{other['txnid']}"))["status"] == "INITIATED"


async def test_bad_return_signature(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    resp = await razorpay_return(gw, payment["txnid"], order_id, "pay_X1", "wrong-secret")
    assert resp.code == 303 and "reason=bad_signature" in resp.headers["Location"]
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"


async def test_unsigned_failure_return_changes_nothing(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    resp = await gw.fetch(
        "POST",
        f"/v1/payments/razorpay/return?txnid={payment['txnid']}",
        auth=False,
        form={
            "error[code]": "BAD_REQUEST_ERROR",
            "error[reason]": "payment_cancelled",
            "error[description]": "Payment processing cancelled by user",
        },
    )
    assert resp.code == 303
    q = check_sig(resp.headers["Location"])
    assert q["status"] == "failed" and q["reason"] == "payment_failed"  # not what it says
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"


async def test_webhook_first_then_redirect(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    hook = orjson.loads(
        (
            await send_webhook(
                gw, webhook("order.paid", order_id, cart["total_amount"], receipt=payment["txnid"])
            )
        ).body
    )
    assert hook["status"] == "SUCCESS" and hook["applied"] is True and hook["booking_id"]
    resp = await razorpay_return(gw, payment["txnid"], order_id, "pay_ABC123")
    assert check_sig(resp.headers["Location"])["booking_id"] == hook["booking_id"]


async def test_webhook_failure_reopens_cart(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    hook = orjson.loads(
        (await send_webhook(gw, webhook("payment.failed", order_id, cart["total_amount"]))).body
    )
    assert hook["status"] == "FAILED" and hook["applied"] is True
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "ACTIVE"


async def test_webhook_checks_amount_and_currency(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    before = await gw.redis.hgetall(gw.keys.payment(payment["txnid"]))
    r = await send_webhook(gw, webhook("payment.captured", order_id, cart["total_amount"] - 1))
    assert r.code == 422 and "amount" in orjson.loads(r.body)["detail"]
    r = await send_webhook(
        gw, webhook("payment.captured", order_id, cart["total_amount"], currency="USD")
    )
    assert r.code == 422 and "currency" in orjson.loads(r.body)["detail"]
    assert await gw.redis.hgetall(gw.keys.payment(payment["txnid"])) == before


async def test_webhook_bad_signature_and_other_events(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    body = webhook("payment.captured", order_id, cart["total_amount"])
    r = await send_webhook(gw, body, secret="not-the-secret")
    assert r.code == 401
    r = await gw.fetch(
        "POST",
        "/v1/payments/razorpay/webhook",
        body=body,
        auth=False,
        headers={"Content-Type": "application/json"},
    )
    assert r.code == 400
    r = await send_webhook(gw, orjson.dumps({"event": "refund.created", "payload": {}}))
    assert r.code == 200 and orjson.loads(r.body)["status"] == "IGNORED"
    r = await send_webhook(gw, b"not json")
    assert r.code == 400
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"


async def test_orders_api_down(gw, razorpay_api):
    cart = await gw.cart_with_items()
    razorpay_api.fail_with = 500
    r = await gw.fetch(
        "POST",
        f"/v1/carts/{cart['cart_id']}/payments",
        json={
            "provider": "razorpay",
            "customer": {"firstname": "A", "email": "a@b.co", "phone": "9876543210"},
        },
    )
    assert r.code == 502 and RZP_SECRET not in r.body.decode()
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "ACTIVE"
