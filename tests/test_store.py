"""The Redis store: scripts by EVALSHA, every key of a change in one cluster slot, logs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from redis.cluster import key_slot

from gateway.errors import Conflict
from handlers.base import describe
from store import keys as ids
from store.keys import Keys
from store.scripts import LUA_DIR, NAMES
from tests.conftest import PAYU_SALT, RETURN_SECRET
from tests.test_carts import CUSTOMER, ITEM


def test_every_key_of_a_change_shares_one_slot():
    k = Keys("gw")
    for partitions in (1, 16, 256):
        cart_id = ids.new_cart_id(partitions)
        txnid = ids.new_txnid(cart_id)
        booking_id = ids.booking_id_for(cart_id)
        assert ids.cart_id_of_txn(txnid) == cart_id
        assert ids.cart_id_of_booking(booking_id) == cart_id
        assert ids.CART_RE.match(cart_id) and ids.TXN_RE.match(txnid)
        assert ids.BOOKING_RE.match(booking_id) and len(txnid) <= 25  # PayU's limit
        slots = {
            key_slot(key.encode())
            for key in (
                k.cart(cart_id),
                k.payment(txnid),
                k.booking(booking_id),
                k.stream_of(cart_id),
            )
        }
        assert len(slots) == 1


def test_scripts_declare_their_contract():
    for name in NAMES:
        header = [
            line
            for line in (LUA_DIR / f"{name}.lua").read_text().splitlines()
            if line.startswith("--")
        ]
        text = "\n".join(header)
        assert "KEYS[1]" in text and "ARGV[1]" in text and "Returns" in text, name


async def test_state_changes_run_by_evalsha(gw):
    before = await gw.redis.info("commandstats")
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    assert (await gw.payu_return(payment)).code == 303
    after = await gw.redis.info("commandstats")
    calls = after["cmdstat_evalsha"]["calls"] - before.get("cmdstat_evalsha", {"calls": 0})["calls"]
    assert calls >= 5  # create, two items, start, settle (other tests may run too)
    evals = after.get("cmdstat_eval", {"calls": 0})["calls"]
    assert evals == before.get("cmdstat_eval", {"calls": 0})["calls"]


async def test_conversion_logged_without_secrets(gw, caplog):
    caplog.set_level(logging.INFO)
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    form_hash = payment["redirect"]["fields"]["hash"]
    assert (await gw.payu_return(payment)).code == 303
    converted = [r for r in caplog.records if r.getMessage() == "cart converted"]
    assert len(converted) == 1
    rec = converted[0]
    assert rec.cart_id == cart["cart_id"] and rec.status == "CONVERTED"
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (PAYU_SALT, RETURN_SECRET, form_hash):
        assert secret not in everything


async def payment_keys(gw: Any) -> list[str]:
    return [key async for key in gw.redis.scan_iter(match=f"{gw.keys.prefix}:*:pay:*")]


async def test_the_store_refuses_a_payment_for_a_stale_cart_version_or_amount(gw):
    """payment_start.lua's check: the version and the amount the payment was priced for must
    be the cart's. A stale version, or another amount (100 paise on a cart of 149,900), is
    Conflict cart_changed (409), and nothing is written: no payment, the cart as it was, no
    event."""
    cart = await gw.cart_with_items()
    cid, version, total = cart["cart_id"], cart["version"], cart["total_amount"]
    assert total == 149_900
    before = await gw.redis.hgetall(gw.keys.cart(cid))
    events = await gw.redis.xlen(gw.keys.stream_of(cid))
    for stale_version, amount in ((version - 1, total), (version, 100), (version + 1, total)):
        txnid = ids.new_txnid(cid)
        with pytest.raises(Conflict) as refused:
            await gw.store.start_payment(cid, txnid, "payu", stale_version, amount, "")
        assert refused.value.reason == "cart_changed"
        assert describe(refused.value)[0] == 409
        assert not await gw.redis.exists(gw.keys.payment(txnid))
    assert await payment_keys(gw) == []
    assert await gw.redis.hgetall(gw.keys.cart(cid)) == before
    assert await gw.redis.xlen(gw.keys.stream_of(cid)) == events
    # the same call with the cart's own version and amount starts it
    txnid = ids.new_txnid(cid)
    started = await gw.store.start_payment(cid, txnid, "payu", version, total, "")
    assert started["status"] == "INITIATED" and started["amount"] == str(total)


async def test_a_payment_started_while_its_cart_changes_is_refused(gw, razorpay_api):
    """Through HTTP: the cart changes while Razorpay's order is being made (after the gateway
    priced the payment, before the payment is stored): 409, no payment, no event."""
    cart = await gw.cart_with_items()
    cid = cart["cart_id"]
    razorpay_api.gate = asyncio.Event()
    starting = asyncio.ensure_future(
        gw.fetch(
            "POST", f"/v1/carts/{cid}/payments", json={"provider": "razorpay", "customer": CUSTOMER}
        )
    )
    await asyncio.wait_for(razorpay_api.held.wait(), 10)
    changed = await gw.json("POST", f"/v1/carts/{cid}/items", json=ITEM)
    assert changed["version"] == cart["version"] + 1
    before = await gw.redis.hgetall(gw.keys.cart(cid))
    events = await gw.redis.xlen(gw.keys.stream_of(cid))
    razorpay_api.gate.set()
    resp = await asyncio.wait_for(starting, 30)
    assert resp.code == 409, resp.body
    assert "cart changed" in orjson.loads(resp.body)["detail"]
    assert await gw.metric("gateway_bad_requests_total", reason="cart_changed") == 1
    assert await payment_keys(gw) == []
    assert await gw.redis.hgetall(gw.keys.cart(cid)) == before
    assert await gw.redis.xlen(gw.keys.stream_of(cid)) == events
    assert (await gw.json("GET", f"/v1/carts/{cid}"))["status"] == "ACTIVE"
    # started again, it is priced at the cart's new total
    again = await gw.start(cid, "razorpay")
    assert again["amount"] == changed["total_amount"]


async def test_a_success_after_the_payment_window_is_a_refund(make_gw):
    """payment_settle.lua reads the cart's effective status: a genuine success for a payment
    whose window has passed (its cart EXPIRED, though the stored status still says
    CHECKOUT) makes no booking and converts nothing: SUCCESS, refund_required, cart_expired,
    and a payment.refund_required event."""
    gw = await make_gw(cart_ttl_s=1, payment_window_s=1)
    cart = await gw.cart_with_items()
    cid = cart["cart_id"]
    payment = await gw.start(cid)
    deadline = asyncio.get_running_loop().time() + 10
    while (await gw.json("GET", f"/v1/carts/{cid}"))["status"] != "EXPIRED":
        assert asyncio.get_running_loop().time() < deadline, "the cart did not expire"
        await asyncio.sleep(0.1)
    assert await gw.redis.hget(gw.keys.cart(cid), "status") == "CHECKOUT"  # as stored
    resp = await gw.payu_return(payment)
    assert resp.code == 303 and "reason=refund_required" in resp.headers["Location"]
    paid = await gw.json("GET", f"/v1/payments/{payment['txnid']}")
    assert paid["status"] == "SUCCESS" and paid["refund_required"] is True
    assert paid["reason"] == "cart_expired" and paid["booking_id"] is None
    assert not await gw.redis.exists(gw.keys.booking(ids.booking_id_for(cid)))
    assert (await gw.json("GET", f"/v1/carts/{cid}"))["status"] == "EXPIRED"
    assert await gw.redis.hget(gw.keys.cart(cid), "status") == "CHECKOUT"
    last = (await gw.events())[-1]
    assert last["type"] == "payment.refund_required"
    assert last["payment"]["txnid"] == payment["txnid"] and "booking" not in last
    assert await gw.metric("gateway_refunds_required_total", reason="cart_expired") == 1


async def test_a_busy_redis_at_start_is_waited_for_not_a_configuration_error(own_redis):
    """A Redis that answers -BUSY (a long script running) refuses for a while only: the
    connect retries instead of stopping the gateway as misconfigured."""
    import socket

    from store.redis_store import RedisStore

    _, port = own_redis("--busy-reply-threshold", "50")
    url = f"redis://127.0.0.1:{port}/0"
    spinner = socket.create_connection(("127.0.0.1", port), timeout=5)
    spinner.sendall(b'EVAL "while true do end" 0\r\n')  # busy until SCRIPT KILL
    await asyncio.sleep(0.3)
    connecting = asyncio.create_task(
        RedisStore.connect(url, "gwtest-busy", cart_ttl_s=60, payment_window_s=60, attempts=8)
    )
    await asyncio.sleep(0.5)
    assert not connecting.done(), "the connect gave up on a busy Redis"
    killer = socket.create_connection(("127.0.0.1", port), timeout=5)
    killer.sendall(b"SCRIPT KILL\r\n")
    assert killer.recv(64).startswith(b"+OK")
    store = await asyncio.wait_for(connecting, 20)
    await store.close()
    killer.close()
    spinner.close()
