"""The OpenAPI 3.1 document of every endpoint the gateway serves, built as a plain dict.

Patterns, limits and enums are taken from the modules that enforce them (``store.keys``,
``handlers.validate``, ``gateway.money``, the providers), so the document cannot drift from
the checks. ``tests/test_openapi.py`` holds it against ``gateway.app.ROUTES``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from gateway import __version__
from gateway.money import DECIMAL_RE, EXPONENTS
from gateway.providers.payu import PayU
from gateway.providers.razorpay import ORDER_RE, PAYMENT_RE, Razorpay
from gateway.providers.sandbox import Sandbox
from handlers import validate
from handlers.base import PROBLEM_BASE, REQUEST_ID_RE
from store import redis_store
from store.keys import BOOKING_RE, CART_RE, TXN_RE

Json = dict[str, Any]

JSON = "application/json"
PROBLEM = "application/problem+json"
FORM = "application/x-www-form-urlencoded"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
PROVIDERS = sorted([PayU.name, Razorpay.name, Sandbox.name])
HEX_SHA256 = r"^[0-9a-f]{64}$"

DESCRIPTION = """\
The merchant creates a cart, adds services to it and starts a payment with a provider \
(PayU or Razorpay): the answer says what the customer's browser must post to the provider. \
The provider sends the browser back to `/v1/payments/{provider}/return`, which verifies the \
provider's signature and the amount, converts the cart into exactly one booking in one atomic \
step, and answers **303** to the merchant's success or failure page with a signed query. The \
provider's server-to-server webhook carries the same outcome; the return, the webhook and any \
retry of either may arrive in any order and converge on one outcome.

Lifecycle: cart `ACTIVE` → (payment started) `CHECKOUT`, items frozen → `CONVERTED` on the \
first successful payment (payment `SUCCESS`, booking `CONFIRMED`), or back to `ACTIVE` when \
the payment fails; an idle cart becomes `EXPIRED`. `CONVERTED` and `EXPIRED` are final.

Money is always an integer in minor units (paise, cents). Merchant calls carry \
`Authorization: Bearer <key>`. Errors are `application/problem+json` (RFC 9457)."""

RETURN_DESCRIPTION = """\
The customer's browser, sent back by the provider (PayU posts a form to `surl`/`furl`; \
Razorpay posts to `callback_url`, whose query carries `txnid`). Query fields and form fields \
are read together (a form field wins). The answer is always a **303** or a 4xx problem.

The 303 target is never taken from the request:

* success: `{GATEWAY_SUCCESS_URL}?txnid=…&booking_id=…&status=success&sig=…`
* failure, pending, a bad signature on a known txnid, a signed notice that does not match \
the payment, or a second payment for a converted cart: \
`{GATEWAY_FAILURE_URL}?txnid=…&status=failed|pending&reason=…&sig=…`

`sig` is the hex HMAC-SHA256, keyed by `GATEWAY_RETURN_SECRET`, of everything between `?` \
and `&sig=`. A query the configured URL already has is kept, first, and is covered by the \
signature, so the merchant's page can trust what it shows. Replays give the same 303 and the \
same booking id. An unknown txnid or unparseable input is a 400 and changes nothing."""

WEBHOOK_DESCRIPTION = """\
The provider's server-to-server notice: 200 once applied or already applied (replays are \
answered, not re-applied).

* PayU posts the same form as its return (`application/x-www-form-urlencoded`), signed with \
the same reverse hash.
* Razorpay posts a JSON event with `X-Razorpay-Signature` = hex HMAC-SHA256(raw body, \
webhook secret). `payment.captured` and `order.paid` complete the payment (after amount and \
currency are checked against the stored payment), `payment.failed` fails it, and other events \
are acknowledged with status `IGNORED`."""


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
                            "description": "pending, payment_failed, bad_signature, "
                            "amount_mismatch, currency_mismatch, order_mismatch, "
                            "provider_mismatch, refund_required, or the provider's error code",
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
        "error": {"type": "string", "description": "PayU's error code, the failure reason"},
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
                    "bound (503 instead when GATEWAY_READY_FAIL_ON_LAG=true)",
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

REQUEST_ID_HEADER: Json = {"$ref": "#/components/headers/XRequestId"}


def _response(description: str, content: Json | None = None, headers: Json | None = None) -> Json:
    out: Json = {
        "description": description,
        "headers": {"X-Request-ID": REQUEST_ID_HEADER, **(headers or {})},
    }
    if content is not None:
        out["content"] = content
    return out


def _json(description: str, schema: str, headers: Json | None = None) -> Json:
    return _response(description, {JSON: {"schema": _ref(schema)}}, headers)


def _location(description: str) -> Json:
    return {"required": True, "description": description, "schema": {"type": "string"}}


def _problem(description: str) -> Json:
    return _response(description, {PROBLEM: {"schema": _ref("Problem")}})


def _path_param(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


CART_ID = _path_param("cart_id", _ref("CartId"), "the cart; a malformed id is 400")
TXNID = _path_param("txnid", _ref("TxnId"), "the payment; a malformed id is 400")
BOOKING_ID = _path_param("booking_id", _ref("BookingId"), "the booking; a malformed id is 400")
SERVICE_ID = _path_param("service_id", _ref("ServiceId"), "the service; a malformed id is 400")
PROVIDER = _path_param("provider", _ref("Provider"), "the provider; one without credentials is 404")


def _op(
    operation_id: str,
    summary: str,
    tag: str,
    *,
    auth: bool,
    responses: Json,
    problems: dict[int, str],
    description: str | None = None,
    parameters: list[Json] | None = None,
    body: Json | None = None,
) -> Json:
    op: Json = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description is not None:
        op["description"] = description
    op["parameters"] = [
        *(parameters or []),
        {"$ref": "#/components/parameters/XRequestId"},
    ]
    if body is not None:
        op["requestBody"] = body
    all_problems = dict(problems)
    if auth:
        all_problems[401] = "no `Authorization: Bearer <key>`, or not a configured key"
    if body is not None:
        all_problems.setdefault(413, "the body is larger than the limit (16 KiB)")
    answers = {
        **{str(code): answer for code, answer in responses.items()},
        **{str(code): _problem(text) for code, text in all_problems.items()},
    }
    op["responses"] = dict(sorted(answers.items()))
    op["security"] = BEARER if auth else []
    return op


def _html(description: str) -> Json:
    return _response(description, {"text/html": {"schema": {"type": "string"}}})


def _dev_paths() -> Json:
    sandbox_problems = {
        400: "a field is missing or malformed, surl/furl are not this gateway's sandbox return "
        "URL, or the request hash does not verify",
        404: "the sandbox is off",
    }
    sandbox_op: Json = {
        "auth": False,
        "responses": {
            "200": _html(
                "the payment page: amount, items, a Pay and a Fail button "
                "(forms that post PayU's reverse-hashed return)"
            )
        },
        "problems": sandbox_problems,
        "description": "The sandbox provider's payment page (development only: on when "
        "GATEWAY_SANDBOX=true or no provider has credentials). It takes the PayU-style fields "
        "of a sandbox payment's redirect, in the query (GET) or as a form (POST), checks their "
        "hash as PayU would, and posts back to /v1/payments/sandbox/return signed as PayU signs.",
    }
    return {
        "/sandbox/pay": {
            "get": _op(
                "sandbox_page",
                "The sandbox payment page",
                "development",
                parameters=[
                    {
                        "name": "fields",
                        "in": "query",
                        "required": True,
                        "style": "form",
                        "explode": True,
                        "schema": _ref("PayUForm"),
                        "description": "the redirect's fields",
                    }
                ],
                **sandbox_op,
            ),
            "post": _op(
                "sandbox_page_post",
                "The sandbox payment page (form post)",
                "development",
                body={"required": True, "content": {FORM: {"schema": _ref("PayUForm")}}},
                **sandbox_op,
            ),
        },
        "/demo/{outcome}": {
            "get": _op(
                "demo_result",
                "The built-in success or failure page",
                "development",
                auth=False,
                parameters=[
                    _path_param(
                        "outcome", {"type": "string", "enum": ["success", "failure"]}, "which page"
                    )
                ],
                responses={
                    "200": _html(
                        "the booking (success) or the reason (failure); the query's sig verified"
                    ),
                },
                problems={
                    400: "the query's sig does not verify",
                    404: "the demo pages are off (GATEWAY_SUCCESS_URL and "
                    "GATEWAY_FAILURE_URL are configured), or no such booking",
                },
                description="What GATEWAY_SUCCESS_URL and GATEWAY_FAILURE_URL default to: "
                "pages that verify the redirect's sig, as a merchant's page must, and show "
                "the booking or the failure reason.",
            )
        },
    }


def _json_body(schema: str) -> Json:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


JSON_BODY_PROBLEMS = {
    400: "the body is not valid JSON, or not a JSON object",
    415: "the Content-Type is not application/json",
}


def _cart_paths() -> Json:
    return {
        "/v1/carts": {
            "post": _op(
                "create_cart",
                "Create a cart",
                "carts",
                auth=True,
                body=_json_body("NewCart"),
                responses={
                    "201": _json(
                        "the new cart, ACTIVE and empty",
                        "Cart",
                        {"Location": _location("/v1/carts/{cart_id}")},
                    )
                },
                problems={
                    **JSON_BODY_PROBLEMS,
                    409: "no free cart id could be allocated",
                    422: "a field is missing, unknown, of the wrong type or out of bounds, or "
                    "the currency is not supported",
                },
            )
        },
        "/v1/carts/{cart_id}": {
            "get": _op(
                "get_cart",
                "Read a cart",
                "carts",
                auth=True,
                description="An ACTIVE or CHECKOUT cart idle past its expiry reads EXPIRED; "
                "an expired cart answers for a day more, then 404.",
                parameters=[CART_ID],
                responses={"200": _json("the cart", "Cart")},
                problems={400: "the cart_id is malformed", 404: "no such cart"},
            )
        },
        "/v1/carts/{cart_id}/items": {
            "post": _op(
                "add_cart_item",
                "Add a service to a cart",
                "carts",
                auth=True,
                description="The same service again adds to its quantity (at the same "
                "unit_amount). Only an ACTIVE cart's items change.",
                parameters=[CART_ID],
                body=_json_body("NewItem"),
                responses={"200": _json("the cart, changed", "Cart")},
                problems={
                    **JSON_BODY_PROBLEMS,
                    400: "the cart_id is malformed, or the body is not a JSON object",
                    404: "no such cart",
                    409: "the cart is not ACTIVE (CHECKOUT freezes items; CONVERTED and "
                    "EXPIRED are final), or the service is in it at another unit_amount",
                    422: "a field is missing, unknown, of the wrong type or out of bounds, or "
                    "a cart limit would be passed",
                },
            )
        },
        "/v1/carts/{cart_id}/items/{service_id}": {
            "delete": _op(
                "remove_cart_item",
                "Remove a service from a cart",
                "carts",
                auth=True,
                parameters=[CART_ID, SERVICE_ID],
                responses={"200": _json("the cart, changed", "Cart")},
                problems={
                    400: "the cart_id is malformed",
                    404: "no such cart, or the service is not in it",
                    409: "the cart is not ACTIVE",
                    422: "the service_id is malformed",
                },
            )
        },
        "/v1/carts/{cart_id}/payments": {
            "post": _op(
                "start_payment",
                "Start a payment of the cart",
                "payments",
                auth=True,
                description="Creates a payment INITIATED for the cart's total (with Razorpay, "
                "an order through its Orders API) and moves the cart to CHECKOUT, extending "
                "its life to the payment window. A CHECKOUT cart may be paid again: each "
                "attempt has its own txnid and the first success converts the cart.",
                parameters=[CART_ID],
                body=_json_body("NewPayment"),
                responses={
                    "201": _json(
                        "the payment started, and what the browser posts to the provider",
                        "PaymentStarted",
                        {"Location": _location("/v1/payments/{txnid}")},
                    ),
                    "502": _problem("the provider's API refused or did not answer"),
                },
                problems={
                    **JSON_BODY_PROBLEMS,
                    400: "the cart_id is malformed, or the body is not a JSON object",
                    404: "no such cart",
                    409: "the cart is empty, CONVERTED or EXPIRED, or changed while the "
                    "payment was being started",
                    422: "a field is missing, unknown, of the wrong type or out of bounds; the "
                    "provider is not configured; or the provider does not take the currency",
                },
            )
        },
    }


def _payment_paths() -> Json:
    get_form = {
        "name": "fields",
        "in": "query",
        "required": True,
        "style": "form",
        "explode": True,
        "description": "the provider's fields, in the query",
        "schema": {
            "oneOf": [_ref("PayUForm"), _ref("RazorpayReturnForm"), _ref("RazorpayFailureForm")]
        },
    }
    query_txnid = {
        "name": "txnid",
        "in": "query",
        "required": False,
        "description": "Razorpay's callback_url carries the txnid here; any query field is "
        "read with the form's",
        "schema": _ref("TxnId"),
    }
    redirect = _response(
        "to the merchant's success or failure page, with a signed query",
        headers={
            "Location": {
                "required": True,
                "description": "{GATEWAY_SUCCESS_URL}?txnid=…&booking_id=…&status=success&sig=… "
                "or {GATEWAY_FAILURE_URL}?txnid=…&status=failed|pending&reason=…&sig=…",
                "schema": {"type": "string", "format": "uri"},
                "x-signed-query": _ref("ReturnRedirectQuery"),
            }
        },
    )
    return_problems = {
        400: "unparseable input: a missing or malformed field, a field given twice, a query "
        "that is not UTF-8, or a txnid the gateway does not know",
        404: "no such provider is configured",
        405: "any other method",
        413: "the body is larger than the limit (16 KiB)",
    }

    def return_op(method: str) -> Json:
        post = method == "post"
        return _op(
            f"payment_return_{method}",
            f"The browser's return from the provider ({method.upper()})",
            "providers",
            auth=False,
            description=RETURN_DESCRIPTION,
            parameters=[PROVIDER, query_txnid if post else get_form],
            body=(
                {
                    "required": False,
                    "content": {
                        FORM: {
                            "schema": {
                                "oneOf": [
                                    _ref("PayUForm"),
                                    _ref("RazorpayReturnForm"),
                                    _ref("RazorpayFailureForm"),
                                ]
                            }
                        }
                    },
                }
                if post
                else None
            ),
            responses={"303": redirect},
            problems={
                **return_problems,
                **({415: "a body that is not application/x-www-form-urlencoded"} if post else {}),
            },
        )

    return {
        "/v1/payments/{provider}/return": {"get": return_op("get"), "post": return_op("post")},
        "/v1/payments/{provider}/webhook": {
            "post": _op(
                "payment_webhook",
                "The provider's server-to-server notice",
                "providers",
                auth=False,
                description=WEBHOOK_DESCRIPTION,
                parameters=[
                    PROVIDER,
                    {
                        "name": "X-Razorpay-Signature",
                        "in": "header",
                        "required": False,
                        "description": "Razorpay only, and required there: hex "
                        "HMAC-SHA256(raw body, GATEWAY_RAZORPAY_WEBHOOK_SECRET)",
                        "schema": {"type": "string", "pattern": HEX_SHA256},
                    },
                ],
                body={
                    "required": True,
                    "content": {
                        FORM: {"schema": _ref("PayUForm")},
                        JSON: {"schema": _ref("RazorpayEvent")},
                    },
                },
                responses={"200": _json("applied now, or already applied", "Verdict")},
                problems={
                    400: "unparseable: a missing field or header, a malformed txnid or order, "
                    "or a notice naming no payment the gateway knows",
                    401: "the provider's signature does not verify",
                    404: "no such provider is configured",
                    422: "a signed notice that disagrees with the payment (amount, currency, "
                    "order or provider)",
                },
            )
        },
        "/v1/payments/{txnid}": {
            "get": _op(
                "get_payment",
                "Read a payment",
                "payments",
                auth=True,
                parameters=[TXNID],
                responses={"200": _json("the payment", "Payment")},
                problems={400: "the txnid is malformed", 404: "no such payment"},
            )
        },
        "/v1/bookings/{booking_id}": {
            "get": _op(
                "get_booking",
                "Read a booking",
                "bookings",
                auth=True,
                parameters=[BOOKING_ID],
                responses={"200": _json("the booking", "Booking")},
                problems={400: "the booking_id is malformed", 404: "no such booking"},
            )
        },
    }


def _ops_paths() -> Json:
    return {
        "/metrics": {
            "get": _op(
                "get_metrics",
                "Prometheus metrics",
                "operations",
                auth=False,
                responses={
                    "200": _response(
                        "the Prometheus text exposition format",
                        {"text/plain": {"schema": {"type": "string"}}},
                    )
                },
                problems={},
            )
        },
        "/healthz": {
            "get": _op(
                "get_health",
                "Liveness",
                "operations",
                auth=False,
                responses={"200": _json("the process is up", "Health")},
                problems={},
            )
        },
        "/readyz": {
            "get": _op(
                "get_readiness",
                "Readiness",
                "operations",
                auth=False,
                description="Ready when Redis answers and the process is not draining; also "
                "names the configured providers and whether the sandbox is on.",
                responses={
                    "200": _json("ready", "Ready"),
                    "503": _json("not ready", "Ready"),
                },
                problems={},
            )
        },
        "/openapi.json": {
            "get": _op(
                "get_openapi",
                "This OpenAPI document",
                "operations",
                auth=False,
                responses={
                    "200": _response(
                        "the OpenAPI 3.1 document of every endpoint",
                        {JSON: {"schema": {"type": "object"}}},
                        {
                            "Cache-Control": {
                                "description": "public, max-age=300",
                                "schema": {"type": "string"},
                            }
                        },
                    )
                },
                problems={},
            )
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of every endpoint the gateway serves.

    A new dict each call, sharing no part with another call's, so a caller may change it.
    """
    doc: Json = {
        "openapi": "3.1.0",
        "info": {
            "title": "Payment-return gateway",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "carts", "description": "the merchant's carts"},
            {"name": "payments", "description": "starting and reading payments"},
            {"name": "bookings", "description": "what successful payments made"},
            {"name": "providers", "description": "what the providers send back"},
            {"name": "operations", "description": "health, readiness, metrics, this document"},
        ],
        "paths": {**_cart_paths(), **_payment_paths(), **_ops_paths(), **_dev_paths()},
        "components": {
            "schemas": {
                **_id_schemas(),
                **_cart_schemas(),
                **_payment_schemas(),
                **_provider_schemas(),
                **_ops_schemas(),
            },
            "parameters": {
                "XRequestId": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "echoed back; a missing or malformed one is replaced by a "
                    "random id",
                    "schema": {"type": "string", "pattern": _pattern(REQUEST_ID_RE)},
                }
            },
            "headers": {
                "XRequestId": {
                    "description": "the request's id, also in problem bodies and logs",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a merchant API key from GATEWAY_API_KEYS",
                }
            },
        },
    }
    return copy.deepcopy(doc)
