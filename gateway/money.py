"""Money: integers in minor units inside the gateway; providers' decimal strings parsed exactly."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# ISO 4217 codes the gateway accepts, with their minor-unit exponent.
EXPONENTS: dict[str, int] = {
    "INR": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "AED": 2,
    "AUD": 2,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "HKD": 2,
    "MYR": 2,
    "NZD": 2,
    "SAR": 2,
    "SGD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "ZAR": 2,
    "LKR": 2,
    "NPR": 2,
    "BDT": 2,
    "THB": 2,
    "QAR": 2,
    "JPY": 0,
    "KRW": 0,
    "IDR": 2,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
}
# ASCII digits only (\d would take ٩٩٩ and other Unicode digits, which Decimal reads as 999),
# and matched with fullmatch: $ alone lets a trailing newline through. The pattern keeps
# ^ and $ because the OpenAPI document publishes it, and JSON Schema patterns are not anchored.
DECIMAL_RE = re.compile(r"^[0-9]{1,13}(\.[0-9]{1,3})?$")


def exponent(currency: str) -> int:
    return EXPONENTS[currency]


def to_decimal_string(minor: int, currency: str) -> str:
    """49900 INR -> '499.00' (the form providers such as PayU expect)."""
    exp = EXPONENTS[currency]
    if exp == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**exp)
    return f"{whole}.{frac:0{exp}d}"


def parse_decimal(text: str, currency: str) -> int | None:
    """'499.00' INR -> 49900; None when the text is not an exact amount in that currency."""
    if not DECIMAL_RE.fullmatch(text):
        return None
    try:
        value = Decimal(text) * (10 ** EXPONENTS[currency])
    except (InvalidOperation, KeyError):
        return None
    if value != value.to_integral_value():
        return None
    return int(value)
