"""The one small interface every payment provider implements.

A provider turns a new payment into what the browser posts to it (``start``), and turns what
comes back (the browser's return, the server-to-server webhook) into a ``Notice``: which
payment, what the provider says happened, and whether its signature verified. The gateway
does the rest, so adding a provider touches no handler.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from gateway.errors import BadRequest

_REASON_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class Outcome(StrEnum):
    SUCCESS = "success"  # paid: signature good, provider says captured/success
    FAILURE = "failure"  # the provider says the payment failed (signed)
    PENDING = "pending"  # not final yet: the payment stays INITIATED
    ABANDONED = "abandoned"  # an unsigned failure from the browser: redirect, change nothing
    IGNORED = "ignored"  # a webhook event that does not concern a payment's outcome


@dataclass(frozen=True)
class Customer:
    firstname: str
    email: str
    phone: str


@dataclass(frozen=True)
class PaymentRequest:
    txnid: str
    cart_id: str
    amount: int  # minor units
    currency: str
    description: str
    customer: Customer
    return_url: str  # the gateway's return endpoint for this provider


@dataclass(frozen=True)
class Started:
    order_ref: str  # the provider's order id ('' when it has none)
    redirect: dict[str, Any]  # {"url", "method", "fields"}


@dataclass(frozen=True)
class Notice:
    outcome: Outcome
    signed: bool
    txnid: str | None = None  # None when only the provider's order id is known
    order_ref: str = ""  # the order id the signature covers; checked against the stored one
    provider_payment_id: str = ""
    amount: int | None = None  # minor units, when the notice carries an amount
    currency: str | None = None
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Provider(ABC):
    name: ClassVar[str]
    currencies: ClassVar[frozenset[str] | None] = None  # None: any the gateway accepts

    @abstractmethod
    async def start(self, request: PaymentRequest) -> Started:
        """Create whatever the provider needs and say what the browser must post."""

    @abstractmethod
    def read_return(self, fields: Mapping[str, str]) -> Notice:
        """Parse and verify the browser's return. Raises ``BadRequest`` when unparseable."""

    @abstractmethod
    def read_webhook(self, headers: Mapping[str, str], body: bytes) -> Notice:
        """Parse and verify a webhook. Raises ``BadRequest`` when unparseable."""


def require(fields: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}", reason="missing_field")
    return [fields[n] for n in names]


def clean_reason(text: str, default: str) -> str:
    """A provider's error code, reduced to a short token that is safe in a URL and a log."""
    token = _REASON_RE.sub("_", text).strip("_")[:48]
    return token or default
