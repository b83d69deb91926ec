"""The merchant API: auth, validation, cart rules, expiry, and refunds that must be flagged."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import API_KEY
from tests.test_return_errors import problem

ITEM = {"service_id": "svc-a", "name": "Deep cleaning", "unit_amount": 129900, "quantity": 1}
CUSTOMER = {"firstname": "Asha", "email": "asha@example.com", "phone": "+919876543210"}


async def test_auth(gw):
    r = await gw.fetch("POST", "/v1/carts", json={"user_id": "u", "currency": "INR"}, auth=False)
    assert problem(r, 401)["detail"].startswith("send Authorization")
    r = await gw.fetch(
        "GET",
        "/v1/carts/c00aaaaaaaaaaaaaa",
        headers={"Authorization": "Bearer wrong-key-0123456789"},
    )
    problem(r, 401)
    r = await gw.fetch(
        "GET", "/v1/carts/c00aaaaaaaaaaaaaa", headers={"Authorization": f"Basic {API_KEY}"}
    )
    problem(r, 401)
    assert API_KEY not in r.body.decode()
    # any configured key works
    r = await gw.fetch(
        "POST",
        "/v1/carts",
        json={"user_id": "u", "currency": "INR"},
        headers={"Authorization": "Bearer other-key-0123456789"},
    )
    assert r.code == 201
    assert r.headers["Location"] == f"/v1/carts/{orjson.loads(r.body)['cart_id']}"


async def test_cart_shape(gw):
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "user-7", "currency": "INR"})
    assert set(cart) >= {
        "cart_id",
        "user_id",
        "currency",
        "status",
        "items",
        "total_amount",
        "version",
        "created_at",
        "updated_at",
    }
    assert cart["items"] == [] and cart["total_amount"] == 0 and cart["version"] == 1
    assert cart["created_at"].endswith("Z")
    assert await gw.json("GET", f"/v1/carts/{cart['cart_id']}") == cart
    ttl = await gw.redis.pttl(gw.keys.cart(cart["cart_id"]))
    assert ttl > gw.settings.cart_ttl_s * 1000  # its life, plus the time it answers EXPIRED


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"user_id": "u"}, "missing field(s): currency"),
        ({"user_id": "u", "currency": "INR", "extra": 1}, "unknown field(s): extra"),
        ({"user_id": 5, "currency": "INR"}, "user_id must be a string"),
        ({"user_id": "", "currency": "INR"}, "user_id must be"),
        ({"user_id": "x" * 65, "currency": "INR"}, "user_id must be"),
        ({"user_id": "a b", "currency": "INR"}, "user_id must be"),
        ({"user_id": "u", "currency": "inr"}, "currency must be an ISO 4217 code"),
        ({"user_id": "u", "currency": "XYZ"}, "currency XYZ is not supported"),
    ],
)
async def test_cart_validation(gw, body, fragment):
    r = await gw.fetch("POST", "/v1/carts", json=body)
    assert fragment in problem(r, 422)["detail"]


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"unit_amount": 0}, "unit_amount must be between 1 and"),
        ({"unit_amount": -5}, "unit_amount must be between"),
        ({"unit_amount": 10**11}, "unit_amount must be between"),
        ({"unit_amount": 499.0}, "unit_amount must be an integer"),
        ({"unit_amount": "499"}, "unit_amount must be an integer"),
        ({"unit_amount": True}, "unit_amount must be an integer"),
        ({"quantity": 0}, "quantity must be between 1 and 1000"),
        ({"quantity": 1001}, "quantity must be between"),
        ({"service_id": "has space"}, "service_id must be"),
        ({"service_id": "s" * 65}, "service_id must be"),
        ({"name": ""}, "name must be"),
        ({"name": "a|b"}, "name must be"),
        ({"name": "new\nline"}, "name must be"),
        ({"name": "n" * 201}, "name must be"),
    ],
)
async def test_item_validation(gw, change, fragment):
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u", "currency": "INR"})
    r = await gw.fetch("POST", f"/v1/carts/{cart['cart_id']}/items", json={**ITEM, **change})
    assert fragment in problem(r, 422)["detail"]
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["version"] == 1


async def test_bad_bodies_and_ids(gw):
    r = await gw.fetch(
        "POST", "/v1/carts", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert problem(r, 400)["detail"] == "the body is not valid JSON"
    r = await gw.fetch(
        "POST", "/v1/carts", body=b"[1,2]", headers={"Content-Type": "application/json"}
    )
    assert problem(r, 400)["detail"] == "the body must be a JSON object"
    r = await gw.fetch(
        "POST", "/v1/carts", body=b"user_id=u", headers={"Content-Type": "text/plain"}
    )
    problem(r, 415)
    r = await gw.fetch(
        "POST", "/v1/carts", json={"user_id": "u", "currency": "INR", "pad": "x" * 20_000}
    )
    problem(r, 413)
    r = await gw.fetch("GET", "/v1/carts/not-a-cart")
    assert problem(r, 400)["detail"] == "cart_id is malformed"
    r = await gw.fetch("GET", "/v1/carts/c00aaaaaaaaaaaaaa")
    assert problem(r, 404)["detail"] == "no cart c00aaaaaaaaaaaaaa"
    r = await gw.fetch("GET", "/v1/payments/t00aaaaaaaaaaaaaaaaaaaa")
    problem(r, 404)
    r = await gw.fetch("GET", "/v1/bookings/b00aaaaaaaaaaaaaa")
    problem(r, 404)
    r = await gw.fetch("GET", "/v1/nothing-here")
    problem(r, 404)
    r = await gw.fetch("PATCH", "/v1/carts", json={})
    assert problem(r, 405) and r.headers["Allow"] == "POST"
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert 'gateway_bad_requests_total{reason="bad_json"} 2.0' in metrics
    assert 'gateway_bad_requests_total{reason="body_too_large"} 1.0' in metrics


async def test_item_rules(gw):
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u", "currency": "INR"})
    cid = cart["cart_id"]
    await gw.json("POST", f"/v1/carts/{cid}/items", json=ITEM)
    r = await gw.fetch("POST", f"/v1/carts/{cid}/items", json={**ITEM, "unit_amount": 5})
    assert "another unit_amount" in problem(r, 409)["detail"]
    r = await gw.fetch("DELETE", f"/v1/carts/{cid}/items/svc-zzz")
    assert problem(r, 404)["detail"] == f"service svc-zzz is not in cart {cid}"
    r = await gw.fetch("POST", f"/v1/carts/{cid}/items", json={**ITEM, "quantity": 1000})
    assert "may not exceed 1000" in problem(r, 422)["detail"]
    await gw.json("DELETE", f"/v1/carts/{cid}/items/svc-a")
    r = await gw.fetch(
        "POST", f"/v1/carts/{cid}/payments", json={"provider": "payu", "customer": CUSTOMER}
    )
    assert problem(r, 409)["detail"] == "the cart is empty"


async def test_payment_validation(gw):
    cart = await gw.cart_with_items()
    cid = cart["cart_id"]
    for body, status in [
        ({"provider": "stripe", "customer": CUSTOMER}, 422),
        ({"provider": "payu"}, 422),
        ({"provider": "payu", "customer": {**CUSTOMER, "email": "nope"}}, 422),
        ({"provider": "payu", "customer": {**CUSTOMER, "phone": "12ab"}}, 422),
        ({"provider": "payu", "customer": {**CUSTOMER, "firstname": "A|B"}}, 422),
        ({"provider": "payu", "customer": "Asha"}, 422),
    ]:
        problem(await gw.fetch("POST", f"/v1/carts/{cid}/payments", json=body), status)
    assert (await gw.json("GET", f"/v1/carts/{cid}"))["status"] == "ACTIVE"


async def test_new_attempt_on_checkout_cart(gw):
    """The customer came back without paying: a second attempt, and the first success wins."""
    cart = await gw.cart_with_items()
    first = await gw.start(cart["cart_id"])
    second = await gw.start(cart["cart_id"])
    assert first["txnid"] != second["txnid"] and first["amount"] == second["amount"]
    ok = await gw.payu_return(second)
    assert ok.code == 303
    late = await gw.payu_return(first)
    assert late.code == 303 and "reason=refund_required" in late.headers["Location"]
    pay = await gw.json("GET", f"/v1/payments/{first['txnid']}")
    assert pay["status"] == "SUCCESS" and pay["refund_required"] is True
    assert pay["reason"] == "cart_converted" and pay["booking_id"] is None
    types = [e["type"] for e in await gw.events()]
    assert types.count("payment.refund_required") == 1
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert 'gateway_refunds_required_total{reason="cart_converted"} 1.0' in metrics


async def test_payment_for_earlier_cart_version(gw):
    cart = await gw.cart_with_items()
    cid = cart["cart_id"]
    old = await gw.start(cid)
    assert (await gw.payu_return(old, "failure")).code == 303
    await gw.json("POST", f"/v1/carts/{cid}/items", json=ITEM)  # the cart changes
    late = await gw.payu_return(old)  # the provider says the old attempt was paid after all
    assert "reason=refund_required" in late.headers["Location"]
    pay = await gw.json("GET", f"/v1/payments/{old['txnid']}")
    assert pay["refund_required"] is True and pay["reason"] == "cart_changed"
    assert (await gw.json("GET", f"/v1/carts/{cid}"))["status"] == "ACTIVE"
    new = await gw.start(cid)
    assert new["amount"] == cart["total_amount"] + ITEM["unit_amount"]
    assert (await gw.payu_return(new)).code == 303
    assert (await gw.json("GET", f"/v1/carts/{cid}"))["status"] == "CONVERTED"


async def test_failure_of_an_older_attempt_keeps_cart_frozen(gw):
    cart = await gw.cart_with_items()
    first = await gw.start(cart["cart_id"])
    await gw.start(cart["cart_id"])
    await gw.payu_return(first, "failure")
    assert (await gw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "CHECKOUT"


async def test_carts_expire(make_gw):
    gw = await make_gw(cart_ttl_s=1, payment_window_s=3)
    idle = await gw.cart_with_items()
    paying = await gw.cart_with_items()
    payment = await gw.start(paying["cart_id"])
    # starting a payment extends the cart's life to the payment window
    assert await gw.redis.pttl(gw.keys.cart(paying["cart_id"])) > 3000
    await asyncio.sleep(1.3)
    cart = await gw.json("GET", f"/v1/carts/{idle['cart_id']}")
    assert cart["status"] == "EXPIRED"
    r = await gw.fetch("POST", f"/v1/carts/{idle['cart_id']}/items", json=ITEM)
    assert "EXPIRED" in problem(r, 409)["detail"]
    r = await gw.fetch(
        "POST",
        f"/v1/carts/{idle['cart_id']}/payments",
        json={"provider": "payu", "customer": CUSTOMER},
    )
    problem(r, 409)
    assert (await gw.json("GET", f"/v1/carts/{paying['cart_id']}"))["status"] == "CHECKOUT"
    assert (await gw.payu_return(payment)).code == 303
    assert (await gw.json("GET", f"/v1/carts/{paying['cart_id']}"))["status"] == "CONVERTED"
    assert await gw.redis.pttl(gw.keys.cart(paying["cart_id"])) == -1
    assert await gw.redis.pttl(gw.keys.payment(payment["txnid"])) == -1


async def test_request_id_echoed_or_made(gw):
    r = await gw.fetch("GET", "/v1/carts/c00aaaaaaaaaaaaaa", headers={"X-Request-ID": "abc-123"})
    assert r.code == 404 and r.headers["X-Request-ID"] == "abc-123"
    assert orjson.loads(r.body)["request_id"] == "abc-123"
    r = await gw.fetch("GET", "/healthz", headers={"X-Request-ID": "bad id with spaces"})
    made = r.headers["X-Request-ID"]
    assert len(made) == 16 and made != "bad id with spaces"
    r = await gw.fetch("PROPFIND", "/v1/carts", body=b"")
    assert r.code == 405 and orjson.loads(r.body)["request_id"] == r.headers["X-Request-ID"]
