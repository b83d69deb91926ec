"""Many deliveries of the same outcome at once converge on one booking."""

from __future__ import annotations

import asyncio

import orjson

from tests import payu_sign
from tests.conftest import PAYU_SALT
from tests.test_payu import check_sig
from tests.test_razorpay import rzp_sig, send_webhook, webhook


async def count_bookings(gw) -> int:
    return len([k async for k in gw.redis.scan_iter(match=f"{gw.keys.prefix}:*:booking:*")])


async def test_100_concurrent_payu_deliveries(gw, figures):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)

    async def deliver(i: int):
        path = "/v1/payments/payu/return" if i % 2 else "/v1/payments/payu/webhook"
        return await gw.fetch("POST", path, form=form, auth=False)

    answers = await asyncio.gather(*(deliver(i) for i in range(100)))
    redirects = [a for a in answers if a.code == 303]
    hooks = [a for a in answers if a.code == 200]
    assert len(redirects) == 50 and len(hooks) == 50
    booking_ids = {check_sig(a.headers["Location"])["booking_id"] for a in redirects}
    booking_ids |= {orjson.loads(a.body)["booking_id"] for a in hooks}
    assert len(booking_ids) == 1
    assert len({a.headers["Location"] for a in redirects}) == 1
    assert sum(orjson.loads(a.body)["applied"] for a in hooks) <= 1
    assert await count_bookings(gw) == 1
    types = [e["type"] for e in await gw.events()]
    assert types.count("payment.succeeded") == 1
    assert sum(1 for e in await gw.events() if e.get("cart", {}).get("status") == "CONVERTED") == 1
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert "gateway_bookings_created_total 1.0" in metrics
    assert "gateway_carts_converted_total 1.0" in metrics
    figures(requests=len(answers), success_303=len(redirects), bookings_redis=1, lost=0, doubled=0)


async def test_100_concurrent_razorpay_and_failure_race(gw, figures):
    """Redirects, captured/paid webhooks and late failures all at once: one success wins."""
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    amount = cart["total_amount"]
    form = {
        "razorpay_payment_id": "pay_R1",
        "razorpay_order_id": order_id,
        "razorpay_signature": rzp_sig(order_id, "pay_R1"),
    }

    async def deliver(i: int):
        if i % 4 == 0:
            return await gw.fetch(
                "POST",
                f"/v1/payments/razorpay/return?txnid={payment['txnid']}",
                form=form,
                auth=False,
            )
        if i % 4 == 1:
            return await send_webhook(
                gw, webhook("payment.captured", order_id, amount, payment_id="pay_R1")
            )
        if i % 4 == 2:
            return await send_webhook(
                gw,
                webhook(
                    "order.paid", order_id, amount, payment_id="pay_R1", receipt=payment["txnid"]
                ),
            )
        return None

    answers = [a for a in await asyncio.gather(*(deliver(i) for i in range(100))) if a]
    assert all(a.code in (200, 303) for a in answers)
    booking_ids = {check_sig(a.headers["Location"])["booking_id"] for a in answers if a.code == 303}
    booking_ids |= {orjson.loads(a.body)["booking_id"] for a in answers if a.code == 200}
    assert len(booking_ids) == 1 and None not in booking_ids
    assert await count_bookings(gw) == 1
    # a failure after the success changes nothing
    r = await send_webhook(gw, webhook("payment.failed", order_id, amount))
    assert orjson.loads(r.body)["status"] == "SUCCESS"
    assert [e["type"] for e in await gw.events()].count("payment.succeeded") == 1
    figures(
        requests=len(answers),
        success_303=sum(1 for a in answers if a.code == 303),
        bookings_redis=1,
        lost=0,
        doubled=0,
    )


async def test_two_payments_succeed_at_once(gw):
    """Two attempts on one cart both paid, delivered concurrently: one booking, one refund."""
    cart = await gw.cart_with_items()
    first = await gw.start(cart["cart_id"])
    second = await gw.start(cart["cart_id"])
    forms = [
        payu_sign.response_form(p["redirect"]["fields"], "success", PAYU_SALT)
        for p in (first, second)
    ]
    answers = await asyncio.gather(
        *(
            gw.fetch("POST", "/v1/payments/payu/return", form=forms[i % 2], auth=False)
            for i in range(40)
        )
    )
    assert all(a.code == 303 for a in answers)
    pays = [await gw.json("GET", f"/v1/payments/{p['txnid']}") for p in (first, second)]
    assert sorted(p["refund_required"] for p in pays) == [False, True]
    assert all(p["status"] == "SUCCESS" for p in pays)
    assert await count_bookings(gw) == 1
