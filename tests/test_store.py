"""The Redis store: scripts by EVALSHA, every key of a change in one cluster slot, logs."""

from __future__ import annotations

import logging

from redis.cluster import key_slot

from store import keys as ids
from store.keys import Keys
from store.scripts import LUA_DIR, NAMES
from tests.conftest import PAYU_SALT, RETURN_SECRET


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
