"""The reasons a signed failure redirect may give: the gateway's own, and only these.

The merchant's page trusts what ``sig`` covers, so nothing a client or a provider wrote
reaches the redirect's ``reason``: a provider's error code (PayU's ``error``, which its
reverse hash does not cover; Razorpay's unsigned ``error[...]``) stays in the payment's own
``reason`` for the operators, and the redirect says ``payment_failed``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    PAYMENT_FAILED = "payment_failed"  # the provider says so, or the customer left its page
    PENDING = "pending"  # not final at the provider; it may still succeed
    # paid, but no booking could be made: the payment's reason says why (cart_converted,
    # cart_expired, cart_changed, cart_gone: store/lua/payment_settle.lua)
    REFUND_REQUIRED = "refund_required"
    BAD_SIGNATURE = "bad_signature"  # the provider's signature does not verify
    # a signed notice that disagrees with the payment (store/lua/payment_settle.lua)
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    ORDER_MISMATCH = "order_mismatch"
    PROVIDER_MISMATCH = "provider_mismatch"


def redirect_reason(text: str) -> Reason:
    """``text`` when it is one of the gateway's reasons, else ``payment_failed``."""
    try:
        return Reason(text)
    except ValueError:
        return Reason.PAYMENT_FAILED
