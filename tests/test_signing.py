"""Signatures: every provider's and the redirect's are compared by one helper, in constant
time, as bytes, so that any text a client sends is an ordinary signature that does not
verify (never a TypeError, a 500 and a traceback)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.signing import signed_url, verify_query
from tests import payu_sign
from tests.conftest import FAILURE_URL, PAYU_SALT, RETURN_SECRET
from tests.test_razorpay import rzp_sig, webhook

# Signatures that are not hex: non-ASCII once decoded (é, €, a character outside the BMP),
# and a NUL.
ODD = ["é", "€" * 43, "\U0001f600", "\x00"]
RETURN = "/v1/payments/payu/return"


def failed_for(resp: Any) -> str:
    """The reason of a 303 to the failure page whose sig verifies."""
    assert resp.code == 303, (resp.code, resp.body)
    location = resp.headers["Location"]
    assert location.startswith(FAILURE_URL + "?")
    query = urlsplit(location).query
    assert verify_query(query, RETURN_SECRET.encode())
    fields = dict(parse_qsl(query))
    assert fields["status"] == "failed"
    return fields["reason"]


def no_errors_logged(caplog: Any) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@given(st.text(), st.text())
def test_signatures_match_takes_any_text(expected: str, given_text: str) -> None:
    from gateway.signing import signatures_match

    assert signatures_match(expected, given_text) is (expected == given_text)


def test_verify_query_takes_any_sig() -> None:
    secret = RETURN_SECRET.encode()
    url = signed_url("https://m.example/ok", secret, [("txnid", "t1"), ("status", "success")])
    query = urlsplit(url).query
    assert verify_query(query, secret)
    for sig in ODD:
        assert not verify_query(query.rpartition("&sig=")[0] + "&sig=" + sig, secret)


async def test_a_non_ascii_payu_hash_is_a_bad_signature(gw_either, caplog):
    """PayU's return, posted and in a query, with a hash that is not ASCII: the failure page
    (bad_signature), counted, nothing changed, nothing logged as an error."""
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    fields = payment["redirect"]["fields"]
    for signature in ODD:
        form = payu_sign.response_form(fields, "success", PAYU_SALT, hash=signature)
        posted = await gw.fetch("POST", RETURN, form=form, auth=False)
        assert failed_for(posted) == "bad_signature"
        query = await gw.fetch("GET", f"{RETURN}?{urlencode(form)}", auth=False)
        assert failed_for(query) == "bad_signature"
    failures = await gw.metric(
        "gateway_signature_failures_total", provider="payu", channel="return"
    )
    assert failures == 2 * len(ODD)
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"
    assert [e["type"] for e in await gw.events()][-1] == "payment.initiated"
    no_errors_logged(caplog)


async def test_a_non_ascii_payu_webhook_hash_is_a_bad_signature(gw, caplog):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    for signature in ODD:
        form = payu_sign.response_form(
            payment["redirect"]["fields"], "success", PAYU_SALT, hash=signature
        )
        resp = await gw.fetch("POST", "/v1/payments/payu/webhook", form=form, auth=False)
        assert resp.code == 401, resp.body
    failures = await gw.metric(
        "gateway_signature_failures_total", provider="payu", channel="webhook"
    )
    assert failures == len(ODD)
    assert (await gw.json("GET", f"/v1/payments/{payment['txnid']}"))["status"] == "INITIATED"
    no_errors_logged(caplog)


async def test_a_non_ascii_razorpay_signature_is_a_bad_signature(gw_either, caplog):
    gw = gw_either
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    for signature in ODD:
        form = {
            "razorpay_payment_id": "pay_X1",
            "razorpay_order_id": order_id,
            "razorpay_signature": signature,
        }
        resp = await gw.fetch(
            "POST", f"/v1/payments/razorpay/return?txnid={payment['txnid']}", form=form, auth=False
        )
        assert failed_for(resp) == "bad_signature"
    # the genuine signature still verifies
    form["razorpay_signature"] = rzp_sig(order_id, "pay_X1")
    resp = await gw.fetch(
        "POST", f"/v1/payments/razorpay/return?txnid={payment['txnid']}", form=form, auth=False
    )
    assert resp.code == 303 and "status=success" in resp.headers["Location"]
    failures = await gw.metric(
        "gateway_signature_failures_total", provider="razorpay", channel="return"
    )
    assert failures == len(ODD)
    no_errors_logged(caplog)


async def test_a_non_ascii_razorpay_webhook_header_is_a_bad_signature(gw, caplog):
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"], "razorpay")
    order_id = payment["redirect"]["fields"]["order_id"]
    body = webhook("payment.captured", order_id, cart["total_amount"])
    # Header values travel as bytes: é as one Latin-1 byte, and as its two UTF-8 bytes.
    for signature in ("é", "é".encode().decode("latin-1"), "\xff" * 64):
        resp = await gw.fetch(
            "POST",
            "/v1/payments/razorpay/webhook",
            body=body,
            auth=False,
            headers={"Content-Type": "application/json", "X-Razorpay-Signature": signature},
        )
        assert resp.code == 401, resp.body
    good = hmac.new(b"rzp-webhook-s3cret", body, hashlib.sha256).hexdigest()
    resp = await gw.fetch(
        "POST",
        "/v1/payments/razorpay/webhook",
        body=body,
        auth=False,
        headers={"Content-Type": "application/json", "X-Razorpay-Signature": good},
    )
    assert resp.code == 200, resp.body
    failures = await gw.metric(
        "gateway_signature_failures_total", provider="razorpay", channel="webhook"
    )
    assert failures == 3
    no_errors_logged(caplog)


@pytest.mark.parametrize("signature", ODD, ids=["e-acute", "euros", "emoji", "nul"])
async def test_no_provider_raises_on_odd_signatures(signature: str) -> None:
    """The providers' own readers, without HTTP: a notice that does not verify."""
    from gateway.config import PayUCredentials, RazorpayCredentials
    from gateway.providers.payu import PayU
    from gateway.providers.razorpay import Razorpay

    payu = PayU(PayUCredentials("k", "salt"))
    form = {"status": "success", "txnid": "t1", "amount": "1.00", "key": "k", "hash": signature}
    assert payu.read_return(form).signed is False
    assert payu.read_return({**form, "key": signature, "hash": "0" * 128}).signed is False
    rzp = Razorpay(RazorpayCredentials("id", "secret", "hook", "http://127.0.0.1:9"))
    notice = rzp.read_return(
        {
            "razorpay_payment_id": "pay_X1",
            "razorpay_order_id": "order_X1",
            "razorpay_signature": signature,
        }
    )
    assert notice.signed is False
    assert rzp.read_webhook({"X-Razorpay-Signature": signature}, b"{}").signed is False
