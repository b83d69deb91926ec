"""What the gateway signs: a payment it knows to be SUCCESS is answered as a success whatever
an unverified return says, and a signed reason comes only from the gateway's own set."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.signing import verify_query
from tests.conftest import FAILURE_URL, RETURN_SECRET, SUCCESS_URL
from tests.test_razorpay import razorpay_return

RZP_RETURN = "/v1/payments/razorpay/return"


def signed_query(resp: Any) -> dict[str, str]:
    assert resp.code == 303, (resp.code, resp.body)
    query = urlsplit(resp.headers["Location"]).query
    assert verify_query(query, RETURN_SECRET.encode())
    return dict(parse_qsl(query))


def failure(resp: Any) -> tuple[str, str]:
    """(status, reason) of a signed 303 to the failure page."""
    assert resp.headers["Location"].startswith(FAILURE_URL + "?")
    q = signed_query(resp)
    return q["status"], q["reason"]


async def state(gw: Any, payment: dict[str, Any]) -> tuple[Any, ...]:
    return (
        await gw.redis.hgetall(gw.keys.payment(payment["txnid"])),
        len(await gw.events()),
    )


async def test_a_forged_return_for_a_paid_payment_is_answered_with_its_booking(gw_either, caplog):
    """A bad signature, or a signed notice that disagrees (another amount), for a payment
    already SUCCESS: the 303 its genuine replay gets (success URL, its booking), not a
    signed status=failed; the failure is still counted and logged; nothing changes."""
    gw = gw_either
    caplog.set_level(logging.WARNING)
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    paid = await gw.payu_return(payment)
    target = paid.headers["Location"]
    assert target.startswith(SUCCESS_URL) and signed_query(paid)["booking_id"]
    before = await state(gw, payment)
    for forged in (
        await gw.payu_return(payment, hash="0" * 128),
        await gw.payu_return(payment, hash="é"),
        await gw.payu_return(payment, "failure", hash="0" * 128),
        await gw.payu_return(payment, amount="1.00"),  # signed, but not the payment's amount
    ):
        assert forged.code == 303 and forged.headers["Location"] == target
    assert await state(gw, payment) == before
    failures = await gw.metric(
        "gateway_signature_failures_total", provider="payu", channel="return"
    )
    assert failures == 3
    assert await gw.metric("gateway_bad_requests_total", reason="bad_signature") == 3
    assert await gw.metric("gateway_bad_requests_total", reason="amount_mismatch") == 1
    logged = [r for r in caplog.records if r.getMessage() == "signature failure"]
    assert len(logged) == 3 and all(r.txnid == payment["txnid"] for r in logged)


async def test_a_forged_razorpay_return_for_a_paid_payment_gets_its_booking(gw_either):
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    paid = await razorpay_return(gw, payment["txnid"], order_id, "pay_ABC123")
    assert paid.headers["Location"].startswith(SUCCESS_URL)
    forged = await razorpay_return(gw, payment["txnid"], order_id, "pay_ABC123", "not-it")
    assert forged.code == 303 and forged.headers["Location"] == paid.headers["Location"]


async def test_a_forged_return_for_a_refund_gets_what_its_replay_gets(gw_either):
    """A payment SUCCESS with refund_required (its cart converted by another attempt): a
    forged return gets the refund_required failure page its genuine replay gets."""
    gw = gw_either
    cart = await gw.cart_with_items()
    first, second = await gw.start(cart["cart_id"]), await gw.start(cart["cart_id"])
    assert (await gw.payu_return(second)).headers["Location"].startswith(SUCCESS_URL)
    late = await gw.payu_return(first)
    assert failure(late) == ("failed", "refund_required")
    replay = await gw.payu_return(first)
    forged = await gw.payu_return(first, hash="0" * 128)
    assert late.headers["Location"] == replay.headers["Location"] == forged.headers["Location"]


async def test_a_forged_return_for_an_open_payment_still_fails(gw_either):
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    assert failure(await gw.payu_return(payment, hash="0" * 128)) == ("failed", "bad_signature")
    assert failure(await gw.payu_return(payment, amount="1.00")) == ("failed", "amount_mismatch")
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"


@pytest.mark.parametrize(
    "error",
    [
        {"error[reason]": "you_won_a_prize", "error[code]": "BAD_REQUEST_ERROR"},
        {"error[code]": "call_us_on_555_0100"},
        {"error[reason]": "pending", "error[code]": "BAD_REQUEST_ERROR"},
        {"error[reason]": "refund_required"},
    ],
    ids=["reason", "code", "pending", "a-gateway-reason"],
)
async def test_razorpays_unsigned_failure_text_is_never_signed(gw_either, error):
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    before = await state(gw, payment)
    resp = await gw.fetch("POST", f"{RZP_RETURN}?txnid={payment['txnid']}", auth=False, form=error)
    assert failure(resp) == ("failed", "payment_failed")
    assert await state(gw, payment) == before


@pytest.mark.parametrize(
    "error", ["anything_here", "pending", "bad_signature", "E308 <b>call us</b>"]
)
async def test_payus_error_field_is_never_signed(gw_either, error):
    """PayU's `error` is not covered by its reverse hash: a genuinely signed failure with any
    `error` goes to the failure page with payment_failed. The payment keeps the code
    (bounded, made safe) for the operators."""
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    resp = await gw.payu_return(payment, "failure", error=error)
    assert failure(resp) == ("failed", "payment_failed")
    again = await gw.payu_return(payment, "failure", error=error)
    assert again.headers["Location"] == resp.headers["Location"]
    stored = await gw.json("GET", f"/v1/payments/{payment['txnid']}")
    assert stored["status"] == "FAILED" and stored["reason"]
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,48}", stored["reason"]), stored["reason"]
