"""Strict checks of the merchant API's input: types, sizes, charsets, ranges, no unknown fields."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from gateway.errors import BadRequest, ValidationFailed
from gateway.money import EXPONENTS
from gateway.providers.base import Customer
from store.keys import BOOKING_RE, CART_RE, TXN_RE

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
SERVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,185}\.[A-Za-z]{2,63}$")
PHONE_RE = re.compile(r"^\+?[0-9]{6,15}$")
PROVIDER_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Printable text without control characters or PayU's field separator '|'.
TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f|]+$")
MAX_UNIT_AMOUNT = 10**10
MAX_QUANTITY = 1000


def _fields(body: dict[str, Any], required: Iterable[str], optional: Iterable[str] = ()) -> None:
    required = tuple(required)
    allowed = set(required) | set(optional)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(u[:40] for u in unknown[:5])}", reason="unknown_field"
        )
    missing = [name for name in required if name not in body]
    if missing:
        raise ValidationFailed(f"missing field(s): {', '.join(missing)}", reason="missing_field")


def _string(
    body: dict[str, Any], name: str, pattern: re.Pattern[str], what: str, max_len: int = 256
) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be a string", reason="bad_type")
    if len(value) > max_len or not pattern.match(value):
        raise ValidationFailed(f"{name} must be {what}", reason="bad_field")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed(
            f"{name} must be an integer (minor units for amounts)", reason="bad_type"
        )
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", reason="bad_field")
    return value


def new_cart(body: dict[str, Any]) -> tuple[str, str]:
    _fields(body, ("user_id", "currency"))
    user_id = _string(body, "user_id", USER_ID_RE, "1-64 characters of A-Z a-z 0-9 _ . : @ -")
    currency = _string(body, "currency", re.compile(r"^[A-Z]{3}$"), "an ISO 4217 code")
    if currency not in EXPONENTS:
        raise ValidationFailed(f"currency {currency} is not supported", reason="currency")
    return user_id, currency


def new_item(body: dict[str, Any]) -> tuple[str, str, int, int]:
    _fields(body, ("service_id", "name", "unit_amount", "quantity"))
    service_id = _string(
        body, "service_id", SERVICE_ID_RE, "1-64 characters of A-Z a-z 0-9 _ . : -"
    )
    name = _string(body, "name", TEXT_RE, "1-200 printable characters without '|'", 200)
    unit_amount = _integer(body, "unit_amount", 1, MAX_UNIT_AMOUNT)
    quantity = _integer(body, "quantity", 1, MAX_QUANTITY)
    return service_id, name, unit_amount, quantity


def new_payment(body: dict[str, Any]) -> tuple[str, Customer]:
    _fields(body, ("provider", "customer"))
    provider = _string(body, "provider", PROVIDER_RE, "a provider name such as payu or razorpay")
    customer = body["customer"]
    if not isinstance(customer, dict):
        raise ValidationFailed("customer must be an object", reason="bad_type")
    _fields(customer, ("firstname", "email", "phone"))
    return provider, Customer(
        firstname=_string(customer, "firstname", TEXT_RE, "1-60 printable characters", 60),
        email=_string(customer, "email", EMAIL_RE, "an email address", 254),
        phone=_string(customer, "phone", PHONE_RE, "6-15 digits, optionally after +", 16),
    )


def service(value: str) -> str:
    if not SERVICE_ID_RE.match(value):
        raise ValidationFailed(
            "service_id must be 1-64 characters of A-Z a-z 0-9 _ . : -", reason="bad_field"
        )
    return value


def _id(value: str, pattern: re.Pattern[str], name: str) -> str:
    if not pattern.match(value):
        raise BadRequest(f"{name} is malformed", reason="bad_id")
    return value


def cart_id(value: str) -> str:
    return _id(value, CART_RE, "cart_id")


def txnid(value: str) -> str:
    return _id(value, TXN_RE, "txnid")


def booking_id(value: str) -> str:
    return _id(value, BOOKING_RE, "booking_id")
