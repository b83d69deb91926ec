"""The components of the OpenAPI document: its schemas, and the helpers that build them.

Patterns, limits and enums are taken from the modules that enforce them (``store.keys``,
``handlers.validate``, ``gateway.money``, the providers), so the document cannot drift from
the checks. ``gateway.openapi`` puts them together with the paths.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.money import DECIMAL_RE, EXPONENTS
from gateway.providers.payu import PayU
from gateway.providers.razorpay import ORDER_RE, PAYMENT_RE, Razorpay
from gateway.providers.sandbox import Sandbox
from gateway.reasons import Reason
from handlers import validate
from handlers.base import PROBLEM_BASE
from store import redis_store
from store.keys import BOOKING_RE, CART_RE, TXN_RE

Json = dict[str, Any]

JSON = "application/json"
PROBLEM = "application/problem+json"
FORM = "application/x-www-form-urlencoded"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
PROVIDERS = sorted([PayU.name, Razorpay.name, Sandbox.name])
HEX_SHA256 = r"^[0-9a-f]{64}$"


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _pattern(regex: re.Pattern[str]) -> str:
    return regex.pattern


def _timestamp(what: str) -> Json:
    return {
        "type": "string",
        "format": "date-time",
        "description": f"{what} (UTC, milliseconds: 2025-01-31T12:00:00.000Z)",
    }


def _nullable(pattern: str | None, description: str) -> Json:
    schema: Json = {"type": ["string", "null"], "description": description}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def _object(properties: Json, description: str, *, required: list[str] | None = None) -> Json:
    """A closed object; every property required unless ``required`` says otherwise."""
    return {
        "type": "object",
        "description": description,
        "required": list(properties) if required is None else required,
        "properties": properties,
        "additionalProperties": False,
    }


def _form(properties: Json, required: list[str], description: str) -> Json:
    """A provider's form: string fields, and any further fields it sends are allowed."""
    return {
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }


# -- schemas -------------------------------------------------------------------------------


def _id_schemas() -> Json:
    return {
        "CartId": {
            "type": "string",
            "pattern": _pattern(CART_RE),
            "description": "`c` + partition (2 hex) + 14 base32 characters",
            "examples": ["c0f3k7x2m4q9z5a2b7"],
        },
        "TxnId": {
            "type": "string",
            "pattern": _pattern(TXN_RE),
            "description": "`t` + the cart id's partition and core + 6 base32 characters: "
            "one per payment attempt",
            "examples": ["t0f3k7x2m4q9z5a2b7abcdef"],
        },
        "BookingId": {
            "type": "string",
            "pattern": _pattern(BOOKING_RE),
            "description": "`b` + the cart id's partition and core: one booking per cart",
            "examples": ["b0f3k7x2m4q9z5a2b7"],
        },
        "ServiceId": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": _pattern(validate.SERVICE_ID_RE),
            "description": "the merchant's id of a service: 1-64 characters of A-Z a-z 0-9 _ . : -",
        },
        "UserId": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": _pattern(validate.USER_ID_RE),
            "description": "the merchant's id of the customer: 1-64 characters of "
            "A-Z a-z 0-9 _ . : @ -",
        },
        "Currency": {
            "type": "string",
            "enum": sorted(EXPONENTS),
            "description": "ISO 4217 code; amounts are integers in its minor unit",
        },
        "Provider": {
            "type": "string",
            "enum": PROVIDERS,
            "description": "a payment provider; only those with configured credentials "
            "answer (GET /readyz lists them)",
        },
    }


def _cart_schemas() -> Json:
    item_fields: Json = {
        "service_id": _ref("ServiceId"),
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": _pattern(validate.TEXT_RE),
            "description": "printable text without control characters or '|'",
        },
        "unit_amount": {
            "type": "integer",
            "minimum": 1,
            "maximum": validate.MAX_UNIT_AMOUNT,
            "description": "price of one unit, in minor units",
        },
        "quantity": {
            "type": "integer",
            "minimum": 1,
            "maximum": validate.MAX_QUANTITY,
            "description": "units to add; the same service again adds to its quantity",
        },
    }
    return {
        "NewCart": _object(
            {"user_id": _ref("UserId"), "currency": _ref("Currency")},
            "a new, empty cart for one customer in one currency",
        ),
        "NewItem": _object(
            item_fields,
            f"a service to add. A cart holds at most {redis_store.MAX_ITEMS} services, "
            f"{redis_store.MAX_QUANTITY} units of one service and a total of at most "
            f"{redis_store.MAX_TOTAL} minor units (else 422); adding a service already in the "
            "cart at another unit_amount is 409",
        ),
        "CartItem": _object(
            {
                **item_fields,
                "quantity": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": redis_store.MAX_QUANTITY,
                    "description": "units in the cart",
                },
                "line_amount": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "unit_amount * quantity, in minor units",
                },
            },
            "one service in a cart or booking",
        ),
        "Cart": _object(
            {
                "cart_id": _ref("CartId"),
                "user_id": _ref("UserId"),
                "currency": _ref("Currency"),
                "status": {
                    "type": "string",
                    "enum": ["ACTIVE", "CHECKOUT", "CONVERTED", "EXPIRED"],
                    "description": "CHECKOUT: a payment was started, items are frozen; "
                    "CONVERTED and EXPIRED are final",
                },
                "items": {"type": "array", "items": _ref("CartItem")},
                "total_amount": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": redis_store.MAX_TOTAL,
                    "description": "sum of line_amount, in minor units",
                },
                "version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "goes up with every change of the items",
                },
                "created_at": _timestamp("when the cart was created"),
                "updated_at": _timestamp("when the cart last changed"),
                "expires_at": {
                    **_timestamp("when an idle cart expires; null once CONVERTED"),
                    "type": ["string", "null"],
                },
            },
            "a cart",
        ),
    }


def _payment_schemas() -> Json:
    customer = _object(
        {
            "firstname": {
                "type": "string",
                "minLength": 1,
                "maxLength": 60,
                "pattern": _pattern(validate.TEXT_RE),
            },
            "email": {
                "type": "string",
                "format": "email",
                "maxLength": 254,
                "pattern": _pattern(validate.EMAIL_RE),
            },
            "phone": {
                "type": "string",
                "maxLength": 16,
                "pattern": _pattern(validate.PHONE_RE),
                "description": "6-15 digits, optionally after +",
            },
        },
        "the paying customer, passed to the provider",
    )
    return {
        "Customer": customer,
        "NewPayment": _object(
            {"provider": _ref("Provider"), "customer": _ref("Customer")},
            "start a payment of the cart's total with a provider",
        ),
        "PaymentStarted": _object(
            {
                "txnid": _ref("TxnId"),
                "amount": {"type": "integer", "minimum": 1, "description": "minor units"},
                "currency": _ref("Currency"),
                "provider": _ref("Provider"),
                "cart_version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the cart version this payment is for",
                },
                "redirect": _object(
                    {
                        "url": {"type": "string", "format": "uri"},
                        "method": {"type": "string", "const": "POST"},
                        "fields": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "PayU: key, txnid, amount (decimal, e.g. 499.00), "
                            "productinfo, firstname, email, phone, udf1 (the cart id), "
                            "udf2..udf5, surl, furl, hash. Razorpay: key, key_id, order_id, "
                            "amount (minor units), currency, description, prefill[name], "
                            "prefill[email], prefill[contact], notes[txnid], callback_url, "
                            "cancel_url",
                        },
                    },
                    "what the customer's browser posts to the provider, signed as that "
                    "provider expects",
                ),
            },
            "a payment started: the cart is now CHECKOUT",
        ),
        "Payment": _object(
            {
                "txnid": _ref("TxnId"),
                "cart_id": _ref("CartId"),
                "user_id": _ref("UserId"),
                "provider": _ref("Provider"),
                "amount": {"type": "integer", "minimum": 1, "description": "minor units"},
                "currency": _ref("Currency"),
                "status": {"type": "string", "enum": ["INITIATED", "SUCCESS", "FAILED"]},
                "cart_version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the cart version this payment was started for",
                },
                "provider_order_id": _nullable(None, "the provider's order id (Razorpay)"),
                "provider_payment_id": _nullable(
                    None, "the provider's payment id (PayU mihpayid, Razorpay pay_…)"
                ),
                "booking_id": _nullable(
                    _pattern(BOOKING_RE), "the booking this payment made, once SUCCESS"
                ),
                "refund_required": {
                    "type": "boolean",
                    "description": "true for a SUCCESS that made no booking (the cart was "
                    "already converted, expired or changed): the money must go back",
                },
                "reason": _nullable(
                    None,
                    "why it FAILED, or why a refund is required (cart_converted, "
                    "cart_expired, cart_changed, cart_gone)",
                ),
                "created_at": _timestamp("when the payment was started"),
                "updated_at": _timestamp("when the payment last changed"),
            },
            "one payment attempt",
        ),
        "Booking": _object(
            {
                "booking_id": _ref("BookingId"),
                "cart_id": _ref("CartId"),
                "txnid": _ref("TxnId"),
                "user_id": _ref("UserId"),
                "status": {"type": "string", "const": "CONFIRMED"},
                "items": {"type": "array", "items": _ref("CartItem")},
                "amount": {"type": "integer", "minimum": 1, "description": "minor units"},
                "currency": _ref("Currency"),
                "created_at": _timestamp("when the payment converted the cart"),
            },
            "the booking a successful payment made of its cart (exactly one per cart)",
        ),
        "Verdict": _object(
            {
                "txnid": {
                    "type": "string",
                    "description": "the payment's txnid; empty for an IGNORED event",
                },
                "status": {
                    "type": "string",
                    "enum": ["SUCCESS", "FAILED", "INITIATED", "IGNORED"],
                    "description": "the payment's state after the notice; IGNORED: an event "
                    "of no concern to a payment's outcome",
                },
                "booking_id": _nullable(_pattern(BOOKING_RE), "the booking, once SUCCESS"),
                "refund_required": {"type": "boolean"},
                "applied": {
                    "type": "boolean",
                    "description": "true when this notice changed the payment; false for a "
                    "replay, a pending notice or an ignored event",
                },
            },
            "what the webhook's notice came to",
        ),
        "ReturnRedirectQuery": {
            "description": "the signed query of the return's 303 Location (after any query "
            "the configured URL already has)",
            "oneOf": [
                _object(
                    {
                        "txnid": _ref("TxnId"),
                        "booking_id": _ref("BookingId"),
                        "status": {"type": "string", "const": "success"},
                        "sig": {"type": "string", "pattern": HEX_SHA256},
                    },
                    "to GATEWAY_SUCCESS_URL",
                ),
                _object(
                    {
                        "txnid": {"type": "string"},
                        "status": {"type": "string", "enum": ["failed", "pending"]},
                        "reason": {
                            "type": "string",
                            "enum": [str(reason) for reason in Reason],
                            "description": "the gateway's own reason, never the provider's "
                            "error code (that one is in the payment's reason)",
                        },
                        "sig": {"type": "string", "pattern": HEX_SHA256},
                    },
                    "to GATEWAY_FAILURE_URL",
                ),
            ],
        },
    }


def _provider_schemas() -> Json:
    payu_fields: Json = {
        "status": {
            "type": "string",
            "description": "success pays; failure fails; anything else (pending) leaves the "
            "payment INITIATED",
        },
        "txnid": {"type": "string", "pattern": _pattern(TXN_RE)},
        "amount": {
            "type": "string",
            "pattern": _pattern(DECIMAL_RE),
            "description": "decimal amount, e.g. 499.00",
        },
        "productinfo": {"type": "string"},
        "firstname": {"type": "string"},
        "email": {"type": "string"},
        **{f"udf{i}": {"type": "string"} for i in range(1, 6)},
        "mihpayid": {"type": "string", "description": "PayU's payment id"},
        "key": {"type": "string", "description": "the merchant key"},
        "hash": {
            "type": "string",
            "description": "sha512 hex of [additionalCharges|]SALT|status||||||udf5|udf4|udf3|"
            "udf2|udf1|email|firstname|productinfo|amount|txnid|key",
        },
        "additionalCharges": {"type": "string"},
        "error": {
            "type": "string",
            "description": "PayU's error code (not covered by the hash): kept in the failed "
            "payment's reason, never in the redirect",
        },
    }
    razorpay_ids: Json = {
        "razorpay_payment_id": {"type": "string", "pattern": _pattern(PAYMENT_RE)},
        "razorpay_order_id": {"type": "string", "pattern": _pattern(ORDER_RE)},
    }
    return {
        "PayUForm": _form(
            payu_fields,
            ["status", "txnid", "amount", "key", "hash"],
            "what PayU posts to surl/furl (the return) and in its server-to-server notice",
        ),
        "RazorpayReturnForm": _form(
            {
                **razorpay_ids,
                "razorpay_signature": {
                    "type": "string",
                    "pattern": HEX_SHA256,
                    "description": "hex HMAC-SHA256(order_id|payment_id, key_secret), the "
                    "order id being the one the gateway stored",
                },
                "txnid": {"type": "string", "pattern": _pattern(TXN_RE)},
            },
            ["razorpay_payment_id", "razorpay_order_id", "razorpay_signature"],
            "Razorpay Checkout's success callback; txnid comes in the callback_url's query",
        ),
        "RazorpayFailureForm": {
            **_form(
                {
                    "error[code]": {"type": "string"},
                    "error[description]": {"type": "string"},
                    "error[source]": {"type": "string"},
                    "error[step]": {"type": "string"},
                    "error[reason]": {"type": "string"},
                    "error[metadata]": {"type": "string"},
                    "txnid": {"type": "string", "pattern": _pattern(TXN_RE)},
                },
                ["error[code]"],
                "Razorpay Checkout's failure callback: unsigned, so the browser goes to the "
                "failure page and nothing changes (the payment.failed webhook fails the "
                "payment); txnid is required, in the query or the form",
            ),
            "not": {"required": ["razorpay_signature"]},
        },
        "RazorpayPaymentEntity": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": _pattern(PAYMENT_RE)},
                "order_id": {"type": "string", "pattern": _pattern(ORDER_RE)},
                "amount": {"type": "integer", "description": "minor units"},
                "currency": {"type": "string"},
                "status": {"type": "string"},
                "error_code": {"type": ["string", "null"]},
            },
        },
        "RazorpayOrderEntity": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": _pattern(ORDER_RE)},
                "amount": {"type": "integer"},
                "amount_paid": {"type": "integer", "description": "minor units"},
                "currency": {"type": "string"},
                "receipt": {
                    "type": ["string", "null"],
                    "description": "the gateway's txnid, given when the order was created",
                },
                "status": {"type": "string"},
            },
        },
        "RazorpayEvent": {
            "type": "object",
            "description": "a Razorpay webhook event; the payment's order_id (else the "
            "order's id) must name the payment's order",
            "required": ["event"],
            "properties": {
                "entity": {"type": "string", "const": "event"},
                "event": {
                    "type": "string",
                    "examples": ["payment.captured", "order.paid", "payment.failed"],
                },
                "payload": {
                    "type": "object",
                    "properties": {
                        "payment": {
                            "type": "object",
                            "properties": {"entity": _ref("RazorpayPaymentEntity")},
                        },
                        "order": {
                            "type": "object",
                            "properties": {"entity": _ref("RazorpayOrderEntity")},
                        },
                    },
                },
                "created_at": {"type": "integer"},
            },
        },
    }


def _ops_schemas() -> Json:
    return {
        "Problem": _object(
            {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "description": f"{PROBLEM_BASE}<slug>: bad-request, validation, "
                    "unauthorized, not-found, conflict, body-too-large, unsupported-media-type, "
                    "bad-signature, mismatch, provider-unavailable, unavailable, internal, or "
                    "http-<status>",
                },
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "instance": {"type": "string", "description": "the request's path"},
                "request_id": _nullable(None, "the X-Request-ID of the request"),
            },
            "an error, as RFC 9457 problem details",
        ),
        "Health": _object(
            {
                "status": {"type": "string", "const": "ok"},
                "pid": {
                    "type": "integer",
                    "description": "the answering process (one of several with --workers)",
                },
            },
            "the process is up",
        ),
        "Ready": _object(
            {
                "status": {
                    "type": "string",
                    "enum": ["ready", "degraded", "not ready"],
                    "description": "degraded: serving, but the write-behind lags past its "
                    "bound (503 instead when GATEWAY_READY_FAIL_ON_LAG=true) or cannot write "
                    "to PostgreSQL",
                },
                "checks": _object(
                    {
                        "redis": {"type": "boolean", "description": "Redis answers"},
                        "scripts": {
                            "type": "boolean",
                            "description": "every Lua script is loaded in Redis",
                        },
                        "accepting": {
                            "type": "boolean",
                            "description": "false while the process drains",
                        },
                        "writebehind_lag": {
                            "type": "boolean",
                            "description": "the oldest event PostgreSQL lacks is younger than "
                            "GATEWAY_READY_MAX_LAG_S",
                        },
                        "postgres": {
                            "type": "boolean",
                            "description": "no write-behind worker reports failing to write "
                            "to PostgreSQL",
                        },
                    },
                    "each check",
                ),
                "writebehind": {
                    "oneOf": [
                        {"type": "null"},
                        _object(
                            {
                                "lag_seconds": {"type": "number", "minimum": 0},
                                "bound_seconds": {"type": "number"},
                                "queue_length": {"type": "integer", "minimum": 0},
                                "pending": {"type": "integer", "minimum": 0},
                                "dead_letters": {"type": "integer", "minimum": 0},
                                "last_error": _nullable(
                                    None,
                                    "the last error of a write-behind worker that cannot "
                                    "write to PostgreSQL (never a password); null when none "
                                    "fails",
                                ),
                                "failing_since": _nullable(
                                    None, "since when PostgreSQL has been failing (ISO 8601)"
                                ),
                                "failing_for_s": {
                                    "type": ["number", "null"],
                                    "minimum": 0,
                                    "description": "for how many seconds",
                                },
                            },
                            "the write-behind queue, read every second",
                        ),
                    ],
                    "description": "null until the first reading",
                },
                "redis_durability": {
                    "type": "string",
                    "description": "how Redis persists: aof-always (wanted), aof-everysec, "
                    "aof-no, none, unknown",
                },
                "providers": {
                    "type": "array",
                    "items": _ref("Provider"),
                    "description": "the providers with configured credentials",
                },
                "sandbox": {"type": "boolean"},
                "warning": _nullable(None, "says loudly that the sandbox is on"),
            },
            "readiness",
        ),
    }


# -- operations ----------------------------------------------------------------------------


def schemas() -> Json:
    """Every schema of ``components/schemas``."""
    return {
        **_id_schemas(),
        **_cart_schemas(),
        **_payment_schemas(),
        **_provider_schemas(),
        **_ops_schemas(),
    }
