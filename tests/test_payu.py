"""The whole lifecycle with PayU, through HTTP, against the real Redis."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit

import orjson

from tests import payu_sign
from tests.conftest import FAILURE_URL, PAYU_KEY, PAYU_SALT, RETURN_SECRET, SUCCESS_URL


def check_sig(location: str) -> dict[str, str]:
    """Verify ``sig`` the way the merchant's page would, and return the query fields."""
    query = urlsplit(location).query
    body, _, sig = query.rpartition("&sig=")
    expected = hmac.new(RETURN_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig, expected), "sig does not verify"
    return dict(parse_qsl(query))


async def test_lifecycle_success(gw):
    cart = await gw.cart_with_items(items=2)
    cart_id = cart["cart_id"]
    # add the same service again: its quantity grows; remove one: it is gone
    cart = await gw.json(
        "POST",
        f"/v1/carts/{cart_id}/items",
        json={"service_id": "svc-0", "name": "Service 0", "unit_amount": 49900, "quantity": 2},
    )
    assert [i["quantity"] for i in cart["items"]] == [3, 2]
    cart = await gw.json(
        "POST",
        f"/v1/carts/{cart_id}/items",
        json={"service_id": "svc-x", "name": "Extra", "unit_amount": 100, "quantity": 1},
    )
    cart = await gw.json("DELETE", f"/v1/carts/{cart_id}/items/svc-x")
    assert [i["service_id"] for i in cart["items"]] == ["svc-0", "svc-1"]
    total = 3 * 49900 + 2 * 50000
    assert cart["total_amount"] == total
    assert cart["version"] == 6  # created at 1, then five changes

    payment = await gw.start(cart_id, "payu")
    assert payment["amount"] == total and payment["currency"] == "INR"
    redirect = payment["redirect"]
    assert redirect["method"] == "POST"
    f = redirect["fields"]
    assert f["key"] == PAYU_KEY and f["txnid"] == payment["txnid"]
    assert f["amount"] == "2497.00"
    assert f["surl"] == f["furl"] == "https://gateway.example/v1/payments/payu/return"
    assert f["hash"] == payu_sign.request_hash(f, PAYU_SALT)

    cart = await gw.json("GET", f"/v1/carts/{cart_id}")
    assert cart["status"] == "CHECKOUT"

    resp = await gw.payu_return(payment)
    assert resp.code == 303
    location = resp.headers["Location"]
    assert location.startswith(SUCCESS_URL + "&")
    q = check_sig(location)
    assert q["status"] == "success" and q["txnid"] == payment["txnid"] and q["src"] == "gw"
    booking_id = q["booking_id"]

    cart = await gw.json("GET", f"/v1/carts/{cart_id}")
    assert cart["status"] == "CONVERTED"
    booking = await gw.json("GET", f"/v1/bookings/{booking_id}")
    assert booking["status"] == "CONFIRMED"
    assert booking["cart_id"] == cart_id and booking["amount"] == total
    assert booking["items"] == cart["items"]
    pay = await gw.json("GET", f"/v1/payments/{payment['txnid']}")
    assert pay["status"] == "SUCCESS" and pay["booking_id"] == booking_id
    assert pay["provider_payment_id"] == "403993715531234567"
    assert pay["refund_required"] is False

    # a converted cart is kept; it no longer expires
    assert await gw.redis.pttl(gw.keys.cart(cart_id)) == -1

    events = await gw.events()
    types = [e["type"] for e in events]
    assert types == ["cart.created"] + ["cart.updated"] * 5 + [
        "payment.initiated",
        "payment.succeeded",
    ]
    done = events[-1]
    assert done["payment"]["status"] == "SUCCESS" and done["payment"]["amount"] == total
    assert done["booking"]["booking_id"] == booking_id

    def lines(items):
        return sorted((i["service_id"], i["name"], i["unit_amount"], i["quantity"]) for i in items)

    assert lines(done["booking"]["items"]) == lines(cart["items"])
    assert done["booking"]["amount"] == total and done["booking"]["user_id"] == "user-1"
    assert done["cart"]["status"] == "CONVERTED" and done["cart"]["cart_id"] == cart_id

    # the replay gets the same answer, and changes nothing
    again = await gw.payu_return(payment)
    assert again.code == 303 and again.headers["Location"] == location
    assert len(await gw.events()) == len(events)
    # so does a late failure
    late = await gw.payu_return(payment, "failure")
    assert late.code == 303 and late.headers["Location"] == location
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "SUCCESS"
    assert len(await gw.events()) == len(events)

    # a converted cart is final
    r = await gw.fetch(
        "POST",
        f"/v1/carts/{cart_id}/items",
        json={"service_id": "svc-9", "name": "x", "unit_amount": 1, "quantity": 1},
    )
    assert r.code == 409
    r = await gw.fetch("DELETE", f"/v1/carts/{cart_id}/items/svc-0")
    assert r.code == 409
    r = await gw.fetch(
        "POST",
        f"/v1/carts/{cart_id}/payments",
        json={
            "provider": "payu",
            "customer": {"firstname": "A", "email": "a@b.co", "phone": "9876543210"},
        },
    )
    assert r.code == 409
    assert orjson.loads(r.body)["detail"].startswith("the cart is CONVERTED")


async def test_failure_then_pay_again(gw):
    cart = await gw.cart_with_items()
    first = await gw.start(cart["cart_id"])
    # items are frozen while a payment is open
    r = await gw.fetch(
        "POST",
        f"/v1/carts/{cart['cart_id']}/items",
        json={"service_id": "svc-9", "name": "x", "unit_amount": 1, "quantity": 1},
    )
    assert r.code == 409
    r = await gw.fetch("DELETE", f"/v1/carts/{cart['cart_id']}/items/svc-0")
    assert r.code == 409

    resp = await gw.payu_return(first, "failure", error="E308")
    assert resp.code == 303
    loc = resp.headers["Location"]
    assert loc.startswith(FAILURE_URL + "?")
    q = check_sig(loc)
    # PayU's error code is not covered by its hash: the payment keeps it, the redirect
    # gives the gateway's own reason
    assert q["status"] == "failed" and q["reason"] == "payment_failed"
    assert q["txnid"] == first["txnid"]
    failed = await gw.json("GET", f"/v1/payments/{first['txnid']}")
    assert failed["status"] == "FAILED" and failed["reason"] == "E308"
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "ACTIVE"

    second = await gw.start(cart["cart_id"])
    assert second["txnid"] != first["txnid"]
    ok = await gw.payu_return(second)
    assert ok.code == 303 and ok.headers["Location"].startswith(SUCCESS_URL)
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "CONVERTED"
    types = [e["type"] for e in await gw.events()]
    assert types.count("payment.failed") == 1 and types.count("payment.succeeded") == 1


async def test_pending_leaves_payment_initiated(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    resp = await gw.payu_return(payment, "pending")
    assert resp.code == 303
    q = check_sig(resp.headers["Location"])
    assert q["status"] == "pending"
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "CHECKOUT"


async def test_payu_webhook_then_redirect_converge(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
    hook = await gw.json("POST", "/v1/payments/payu/webhook", form=form, auth=False)
    assert hook["status"] == "SUCCESS" and hook["applied"] is True
    again = await gw.json("POST", "/v1/payments/payu/webhook", form=form, auth=False)
    assert again["applied"] is False and again["booking_id"] == hook["booking_id"]
    resp = await gw.payu_return(payment)
    assert resp.code == 303
    assert check_sig(resp.headers["Location"])["booking_id"] == hook["booking_id"]
    assert [e["type"] for e in await gw.events()].count("payment.succeeded") == 1


async def test_additional_charges_in_reverse_hash(gw):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    resp = await gw.payu_return(payment, additionalCharges="12.00")
    assert resp.code == 303 and resp.headers["Location"].startswith(SUCCESS_URL)
