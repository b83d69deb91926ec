"""PayU: the hosted-checkout form, its request hash and its reverse hash.

Request hash: sha512(key|txnid|amount|productinfo|firstname|email|udf1|...|udf5||||||SALT)
Reverse hash: sha512([additionalCharges|]SALT|status||||||udf5|...|udf1|email|firstname|
productinfo|amount|txnid|key). PayU quotes amounts as decimal strings in rupees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import ClassVar

from gateway.config import PayUCredentials
from gateway.errors import BadRequest
from gateway.forms import form_fields
from gateway.money import EXPONENTS, parse_decimal, to_decimal_string
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

UDFS = ("udf1", "udf2", "udf3", "udf4", "udf5")
DEFAULT_PAYMENT_URL = "https://secure.payu.in/_payment"


def request_hash(fields: Mapping[str, str], salt: str) -> str:
    parts = [
        fields.get(n, "")
        for n in ("key", "txnid", "amount", "productinfo", "firstname", "email", *UDFS)
    ]
    text = "|".join([*parts, "", "", "", "", "", salt])
    return hashlib.sha512(text.encode()).hexdigest()


def reverse_hash(fields: Mapping[str, str], salt: str) -> str:
    parts = [salt, fields.get("status", ""), "", "", "", "", ""]
    parts += [fields.get(n, "") for n in reversed(UDFS)]
    parts += [
        fields.get(n, "") for n in ("email", "firstname", "productinfo", "amount", "txnid", "key")
    ]
    text = "|".join(parts)
    if fields.get("additionalCharges"):
        text = f"{fields['additionalCharges']}|{text}"
    return hashlib.sha512(text.encode()).hexdigest()


class PayU(Provider):
    name: ClassVar[str] = "payu"
    # PayU quotes amounts with two decimals, so only currencies of exponent 2 map exactly.
    currencies: ClassVar[frozenset[str] | None] = frozenset(
        c for c, e in EXPONENTS.items() if e == 2
    )

    def __init__(self, creds: PayUCredentials, payment_url: str = DEFAULT_PAYMENT_URL) -> None:
        self.creds = creds
        self.payment_url = payment_url

    async def start(self, request: PaymentRequest) -> Started:
        c = request.customer
        fields = {
            "key": self.creds.key,
            "txnid": request.txnid,
            "amount": to_decimal_string(request.amount, request.currency),
            "productinfo": request.description,
            "firstname": c.firstname,
            "email": c.email,
            "phone": c.phone,
            "udf1": request.cart_id,
            "udf2": "",
            "udf3": "",
            "udf4": "",
            "udf5": "",
            "surl": request.return_url,
            "furl": request.return_url,
        }
        fields["hash"] = request_hash(fields, self.creds.salt)
        return Started("", {"url": self.payment_url, "method": "POST", "fields": fields})

    def read_return(self, fields: Mapping[str, str]) -> Notice:
        status, txnid, amount_text, their_hash, key = require(
            fields, "status", "txnid", "amount", "hash", "key"
        )
        amount = parse_decimal(amount_text, "INR")
        if amount is None:
            raise BadRequest(
                f"amount {amount_text[:32]!r} is not a decimal amount", reason="bad_amount"
            )
        expected = reverse_hash(fields, self.creds.salt)
        signed = signatures_match(expected, their_hash.lower()) & signatures_match(
            self.creds.key, key
        )
        if status == "success":
            outcome = Outcome.SUCCESS
        elif status == "failure":
            outcome = Outcome.FAILURE
        else:
            outcome = Outcome.PENDING
        reason = clean_reason(fields.get("error", ""), "payment_failed")
        return Notice(
            outcome=outcome,
            signed=signed,
            txnid=txnid,
            provider_payment_id=fields.get("mihpayid", "")[:64],
            amount=amount,
            reason=reason if outcome is Outcome.FAILURE else "",
        )

    def read_webhook(self, headers: Mapping[str, str], body: bytes) -> Notice:
        # PayU's server-to-server notice is the same form, with the same reverse hash, read
        # as the return's form is read (the same parser, limit and errors).
        return self.read_return(form_fields(headers, body))
