"""The domain: starting payments, and settling what providers say back.

Handlers parse and write; this module decides. The state itself changes only inside the
Lua scripts of ``store/``, one atomic step each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from gateway.config import Settings
from gateway.errors import (
    BadRequest,
    BadSignature,
    Conflict,
    Mismatch,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from gateway.metrics import Metrics
from gateway.providers.base import Customer, Notice, Outcome, PaymentRequest, Provider
from gateway.reasons import Reason, redirect_reason
from gateway.signing import signed_url
from store import keys as ids
from store.pg_store import PgStore
from store.redis_store import RedisStore, Settled, booking_view, payment_view

log = logging.getLogger("gateway.checkout")


@dataclass(frozen=True)
class Verdict:
    """What a provider notice came to: the payment's state, and where the browser goes."""

    txnid: str
    status: str  # SUCCESS, FAILED, INITIATED, or IGNORED (webhook events of no concern)
    booking_id: str | None = None
    refund_required: bool = False
    reason: str = ""  # the gateway's own (gateway.reasons), for the redirect; '' for a success
    applied: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "txnid": self.txnid,
            "status": self.status,
            "booking_id": self.booking_id,
            "refund_required": self.refund_required,
            "applied": self.applied,
        }


class Checkout:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        providers: dict[str, Provider],
        metrics: Metrics,
        pg: PgStore | None = None,
    ) -> None:
        self.pg = pg
        self.settings = settings
        self.store = store
        self.providers = providers
        self.metrics = metrics

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise NotFound(
                f"no provider {name!r} is configured", reason="unknown_provider"
            ) from None

    async def start_payment(
        self, cart_id: str, provider_name: str, customer: Customer
    ) -> dict[str, Any]:
        provider = self.providers.get(provider_name)
        if provider is None:
            raise ValidationFailed(
                f"provider {provider_name!r} is not configured; use one of "
                f"{', '.join(sorted(self.providers))}",
                reason="unknown_provider",
            )
        cart = await self.store.get_cart_raw(cart_id)
        if provider.currencies is not None and cart["currency"] not in provider.currencies:
            raise ValidationFailed(
                f"{provider.name} does not take {cart['currency']}", reason="currency"
            )
        if cart["items"] == "[]":
            raise Conflict("the cart is empty", reason="cart_empty")
        if cart["status"] not in ("ACTIVE", "CHECKOUT"):
            raise Conflict(
                f"the cart is {cart['status']}: no payment can be started", reason="cart_state"
            )
        txnid = ids.new_txnid(cart_id)
        amount = int(cart["total_amount"])
        started = await provider.start(
            PaymentRequest(
                txnid=txnid,
                cart_id=cart_id,
                amount=amount,
                currency=cart["currency"],
                description=f"Booking for cart {cart_id}",
                customer=customer,
                return_url=f"{self.settings.public_url}/v1/payments/{provider.name}/return",
            )
        )
        if started.order_ref:
            await self.store.index_order(
                provider.name,
                started.order_ref,
                txnid,
                self.settings.payment_window_s + 7 * 86400,
            )
        await self.store.start_payment(
            cart_id, txnid, provider.name, int(cart["version"]), amount, started.order_ref
        )
        self.metrics.payments_started.labels(provider.name).inc()
        log.info(
            "payment started", extra={"cart_id": cart_id, "txnid": txnid, "provider": provider.name}
        )
        return {
            "txnid": txnid,
            "amount": amount,
            "currency": cart["currency"],
            "provider": provider.name,
            "cart_version": int(cart["version"]),
            "redirect": started.redirect,
        }

    async def get_payment(self, txnid: str) -> dict[str, Any]:
        h = await self.store.get_payment(txnid) or await self._durable("payments", txnid)
        if h is None:
            raise NotFound(f"no payment {txnid}")
        return payment_view(h)

    async def get_booking(self, booking_id: str) -> dict[str, Any]:
        h = await self.store.get_booking(booking_id) or await self._durable("bookings", booking_id)
        if h is None:
            raise NotFound(f"no booking {booking_id}")
        return booking_view(h)

    async def _durable(self, table: str, key: str) -> dict[str, str] | None:
        """A record whose Redis copy has expired, from PostgreSQL (merchant reads only)."""
        if self.pg is None:
            return None
        try:
            return await self.pg.fetch_one(table, key)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("postgres read failed", extra={"table": table, "error": type(exc).__name__})
            raise Unavailable(
                f"{table[:-1]} {key} is not in Redis and PostgreSQL did not answer; try again"
            ) from None

    async def settle(self, provider: Provider, notice: Notice, channel: str) -> Verdict:
        """Apply a notice from ``channel`` ('return' or 'webhook').

        Raises BadRequest for an unknown txnid, BadSignature for a notice that does not
        verify and Mismatch for a signed notice that disagrees with the payment; the caller
        decides how each is answered (a failure redirect for the browser, 4xx for webhooks).
        """
        txnid = await self._txnid(provider, notice)
        if notice.outcome is Outcome.IGNORED and notice.signed:
            return Verdict(txnid or "", "IGNORED")
        if notice.outcome is not Outcome.ABANDONED and not notice.signed:
            self.metrics.signature_failures.labels(provider.name, channel).inc()
            log.warning(
                "signature failure",
                extra={"txnid": txnid, "provider": provider.name, "channel": channel},
            )
            if channel == "return" and (
                txnid is None or not await self.store.payment_exists(txnid)
            ):
                raise BadRequest(
                    "the notice names no payment this gateway knows", reason="unknown_txnid"
                )
            bad = BadSignature("the provider's signature does not verify", reason="bad_signature")
            bad.txnid = txnid
            raise bad
        if txnid is None:
            raise BadRequest(
                "the notice names no payment this gateway knows", reason="unknown_txnid"
            )
        if notice.outcome in (Outcome.PENDING, Outcome.ABANDONED):
            payment = await self.store.get_payment(txnid)
            if payment is None:
                raise BadRequest(f"unknown txnid {txnid}", reason="unknown_txnid")
            verdict = known(txnid, payment)
            if payment["status"] == "INITIATED":
                # (an abandoned notice is unsigned: whatever it says stays out of the redirect)
                reason = (
                    Reason.PENDING if notice.outcome is Outcome.PENDING else Reason.PAYMENT_FAILED
                )
                verdict = replace(verdict, reason=reason)
            return verdict
        outcome = "success" if notice.outcome is Outcome.SUCCESS else "failure"
        result = await self.store.settle(
            txnid,
            outcome,
            provider.name,
            amount=notice.amount,
            currency=notice.currency,
            order_ref=notice.order_ref,
            provider_payment_id=notice.provider_payment_id,
            reason=notice.reason,
        )
        if isinstance(result, str):
            if result == "notfound":
                raise BadRequest(f"unknown txnid {txnid}", reason="unknown_txnid")
            field = result.partition(":")[2]
            self.metrics.mismatches.labels(provider.name, field).inc()
            log.warning(
                "notice mismatch", extra={"txnid": txnid, "field": field, "provider": provider.name}
            )
            mismatch = Mismatch(
                f"the notice's {field} does not match the payment", reason=f"{field}_mismatch"
            )
            mismatch.txnid = txnid
            raise mismatch
        return self._verdict(provider, txnid, result)

    def _verdict(self, provider: Provider, txnid: str, result: Settled) -> Verdict:
        if result.applied:
            self._count(provider, result.payment)
        return known(txnid, result.payment, result.applied)

    async def refused_redirect(self, txnid: str, reason: str) -> str:
        """The signed 303 target for a return that does not hold (a bad signature, a signed
        notice that disagrees with the payment): the failure page with ``reason``, unless the
        payment is SUCCESS. Then it is what the genuine return's replay gets (its booking, or
        refund_required): nothing unverified overrides what the gateway knows."""
        payment = await self.store.get_payment(txnid) if txnid else None
        if payment is not None and payment["status"] == "SUCCESS":
            return self.redirect(known(txnid, payment))
        return self.failure_redirect(txnid, reason)

    def _count(self, provider: Provider, p: dict[str, str]) -> None:
        m = self.metrics
        if p["status"] == "SUCCESS" and p["refund_required"] == "1":
            m.child(m.payment_outcomes, provider.name, "refund_required").inc()
            m.refunds_required.labels(p["reason"]).inc()
            log.warning(
                "refund required",
                extra={"txnid": p["txnid"], "cart_id": p["cart_id"], "reason": p["reason"]},
            )
        elif p["status"] == "SUCCESS":
            m.child(m.payment_outcomes, provider.name, "success").inc()
            m.bookings_created.inc()
            m.carts_converted.inc()
            log.info(
                "cart converted",
                extra={
                    "cart_id": p["cart_id"],
                    "status": "CONVERTED",
                    "txnid": p["txnid"],
                    "booking_id": p["booking_id"],
                },
            )
        else:
            m.child(m.payment_outcomes, provider.name, "failed").inc()
            log.info(
                "payment failed",
                extra={"txnid": p["txnid"], "cart_id": p["cart_id"], "reason": p["reason"]},
            )

    async def _txnid(self, provider: Provider, notice: Notice) -> str | None:
        if notice.txnid is not None:
            if not ids.TXN_RE.match(notice.txnid):
                raise BadRequest("txnid is malformed", reason="bad_txnid")
            return notice.txnid
        if notice.order_ref:
            return await self.store.txnid_for_order(provider.name, notice.order_ref)
        return None

    def redirect(self, verdict: Verdict) -> str:
        """The signed 303 target; never anything taken from the request."""
        s = self.settings
        if verdict.status == "SUCCESS" and verdict.booking_id:
            return signed_url(
                s.success_url,
                s.return_secret,
                [
                    ("txnid", verdict.txnid),
                    ("booking_id", verdict.booking_id),
                    ("status", "success"),
                ],
            )
        if verdict.status == "INITIATED" and verdict.reason == Reason.PENDING:
            return self._to_failure_page(verdict.txnid, "pending", Reason.PENDING)
        return self.failure_redirect(verdict.txnid, verdict.reason)

    def failure_redirect(self, txnid: str, reason: str) -> str:
        """The signed 303 target to the failure page; a ``reason`` that is not one of the
        gateway's own (``gateway.reasons``) is signed as ``payment_failed``."""
        return self._to_failure_page(txnid, "failed", redirect_reason(reason))

    def _to_failure_page(self, txnid: str, status: str, reason: Reason) -> str:
        return signed_url(
            self.settings.failure_url,
            self.settings.return_secret,
            [("txnid", txnid), ("status", status), ("reason", reason)],
        )


def known(txnid: str, payment: dict[str, str], applied: bool = False) -> Verdict:
    """A payment's state as a verdict, with the gateway's reason for it (never the
    provider's code, which stays in the payment's own ``reason``)."""
    refund = payment["refund_required"] == "1"
    if payment["status"] == "SUCCESS":
        reason = Reason.REFUND_REQUIRED if refund else ""
    elif payment["status"] == "FAILED":
        reason = Reason.PAYMENT_FAILED
    else:
        reason = ""
    return Verdict(txnid, payment["status"], payment["booking_id"] or None, refund, reason, applied)
