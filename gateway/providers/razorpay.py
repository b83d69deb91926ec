"""Razorpay: an order through its Orders API, Checkout's fields, and its two signatures.

Return: razorpay_signature = hex HMAC-SHA256(order_id|payment_id, key_secret).
Webhook: X-Razorpay-Signature = hex HMAC-SHA256(raw body, webhook_secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gateway.config import RazorpayCredentials
from gateway.errors import BadRequest, ProviderUnavailable
from gateway.providers.base import (
    Notice,
    Outcome,
    PaymentRequest,
    Provider,
    Started,
    clean_reason,
    require,
)
from gateway.signing import signatures_match

log = logging.getLogger("gateway.providers.razorpay")
ORDER_RE = re.compile(r"^order_[A-Za-z0-9]{1,40}$")
PAYMENT_RE = re.compile(r"^pay_[A-Za-z0-9]{1,40}$")
COMPLETING = {"payment.captured", "order.paid"}


def sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class Razorpay(Provider):
    name: ClassVar[str] = "razorpay"

    def __init__(self, creds: RazorpayCredentials, http: AsyncHTTPClient | None = None) -> None:
        self.creds = creds
        self.http = http or AsyncHTTPClient()
        token = base64.b64encode(f"{creds.key_id}:{creds.key_secret}".encode()).decode()
        self._auth = f"Basic {token}"

    async def start(self, request: PaymentRequest) -> Started:
        order = await self._create_order(request)
        c = request.customer
        fields = {
            # `key` is what Checkout.js takes; `key_id` what the hosted (embedded) form takes.
            "key": self.creds.key_id,
            "key_id": self.creds.key_id,
            "order_id": order,
            "amount": str(request.amount),
            "currency": request.currency,
            "description": request.description,
            "prefill[name]": c.firstname,
            "prefill[email]": c.email,
            "prefill[contact]": c.phone,
            "notes[txnid]": request.txnid,
            "callback_url": f"{request.return_url}?txnid={request.txnid}",
            "cancel_url": f"{request.return_url}?txnid={request.txnid}",
        }
        url = f"{self.creds.api_url}/v1/checkout/embedded"
        return Started(order, {"url": url, "method": "POST", "fields": fields})

    async def _create_order(self, request: PaymentRequest) -> str:
        body = orjson.dumps(
            {
                "amount": request.amount,
                "currency": request.currency,
                "receipt": request.txnid,
                "notes": {"txnid": request.txnid, "cart_id": request.cart_id},
            }
        )
        req = HTTPRequest(
            f"{self.creds.api_url}/v1/orders",
            method="POST",
            body=body,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
            connect_timeout=3,
            request_timeout=10,
        )
        try:
            resp = await self.http.fetch(req)
        except HTTPClientError as exc:
            log.warning("razorpay order failed", extra={"status": exc.code, "txnid": request.txnid})
            raise ProviderUnavailable(f"Razorpay refused the order (HTTP {exc.code})") from None
        except OSError as exc:
            log.warning("razorpay unreachable", extra={"error": type(exc).__name__})
            raise ProviderUnavailable("Razorpay's Orders API did not answer") from None
        try:
            order: dict[str, Any] = orjson.loads(resp.body)
            order_id = order["id"]
            ok = (
                isinstance(order_id, str)
                and ORDER_RE.match(order_id) is not None
                and order.get("amount") == request.amount
                and order.get("currency") == request.currency
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ProviderUnavailable("Razorpay answered the order with an unexpected body")
        return str(order_id)

    def read_return(self, fields: Mapping[str, str]) -> Notice:
        txnid = fields.get("txnid") or None
        if "razorpay_signature" not in fields:
            # Checkout's failure callback (error[...] fields) is not signed: the browser is
            # sent to the failure page and the payment.failed webhook changes the state (and
            # brings the signed error code). What the callback says is not used.
            if not any(k.startswith("error[") for k in fields) or txnid is None:
                require(fields, "razorpay_payment_id", "razorpay_order_id", "razorpay_signature")
            return Notice(Outcome.ABANDONED, signed=False, txnid=txnid)
        payment_id, order_id, signature = require(
            fields, "razorpay_payment_id", "razorpay_order_id", "razorpay_signature"
        )
        if not ORDER_RE.match(order_id) or not PAYMENT_RE.match(payment_id):
            raise BadRequest("razorpay ids are malformed", reason="bad_field")
        expected = sign(self.creds.key_secret, f"{order_id}|{payment_id}".encode())
        return Notice(
            Outcome.SUCCESS,
            signed=signatures_match(expected, signature),
            txnid=txnid,
            order_ref=order_id,
            provider_payment_id=payment_id,
        )

    def read_webhook(self, headers: Mapping[str, str], body: bytes) -> Notice:
        signature = headers.get("X-Razorpay-Signature", "")
        if not signature:
            raise BadRequest("missing X-Razorpay-Signature header", reason="missing_field")
        expected = sign(self.creds.webhook_secret, body)
        if not signatures_match(expected, signature):
            return Notice(Outcome.IGNORED, signed=False)
        try:
            doc = orjson.loads(body)
            event = doc["event"]
            payload = doc.get("payload") or {}
            payment = (payload.get("payment") or {}).get("entity") or {}
            order = (payload.get("order") or {}).get("entity") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BadRequest(
                "the webhook body is not a Razorpay event", reason="bad_json"
            ) from None
        if (
            not isinstance(event, str)
            or not isinstance(payment, dict)
            or not isinstance(order, dict)
        ):
            raise BadRequest("the webhook body is not a Razorpay event", reason="bad_json")
        if event in COMPLETING:
            outcome = Outcome.SUCCESS
        elif event == "payment.failed":
            outcome = Outcome.FAILURE
        else:
            return Notice(Outcome.IGNORED, signed=True, extra={"event": event[:64]})
        order_id = payment.get("order_id") or order.get("id")
        amount = payment.get("amount", order.get("amount_paid"))
        currency = payment.get("currency", order.get("currency"))
        receipt = order.get("receipt")
        if not isinstance(order_id, str) or not ORDER_RE.match(order_id):
            raise BadRequest("the event names no valid order_id", reason="bad_field")
        if outcome is Outcome.SUCCESS and (
            not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str)
        ):
            raise BadRequest("the event carries no amount and currency", reason="bad_field")
        return Notice(
            outcome,
            signed=True,
            txnid=receipt if isinstance(receipt, str) else None,
            order_ref=order_id,
            provider_payment_id=str(payment.get("id") or "")[:64],
            amount=amount if outcome is Outcome.SUCCESS else None,
            currency=currency if outcome is Outcome.SUCCESS else None,
            reason=clean_reason(str(payment.get("error_code") or ""), "payment_failed"),
            extra={"event": event},
        )
