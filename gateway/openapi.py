"""The OpenAPI 3.1 document of every endpoint the gateway serves, built as a plain dict: the
paths here, the schemas in ``gateway.openapi_schemas``. ``tests/test_openapi.py`` holds it
against ``gateway.app.ROUTES``.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway import __version__
from gateway.openapi_schemas import (
    BEARER,
    FORM,
    HEX_SHA256,
    JSON,
    PROBLEM,
    Json,
    _pattern,
    _ref,
    schemas,
)
from handlers.base import REQUEST_ID_RE

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
    if tag != "operations":  # every call of the API and the return path goes to Redis
        all_problems.setdefault(
            503,
            "Redis did not answer (or took over 5 s); a state change applied whole or not at "
            "all, its answer possibly lost: a retried return or webhook is answered as a "
            "replay, a cart change should be retried after reading the cart",
        )
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
                description="Ready when Redis answers (its scripts loaded again if it lost "
                "them) and the process is not draining; degraded while the write-behind lags "
                "or cannot write to PostgreSQL (its last error, since when); also names the "
                "configured providers and whether the sandbox is on.",
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
            "schemas": schemas(),
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
