"""Payments: the merchant's read, the browser's return (303) and the providers' webhooks."""

from __future__ import annotations

from gateway.errors import BadSignature, Mismatch
from handlers import validate
from handlers.base import BaseHandler, Context


async def return_target(
    ctx: Context, provider_name: str, fields: dict[str, str]
) -> tuple[str, str]:
    """Settle a browser's return: the signed 303 target, and the reason it went to the
    failure page for a notice that does not hold ('' otherwise). Raises the errors that are
    answered 4xx/5xx (an unknown provider, txnid or field, Redis unavailable)."""
    checkout = ctx.checkout
    provider = checkout.provider(provider_name)
    notice = provider.read_return(fields)
    try:
        verdict = await checkout.settle(provider, notice, "return")
        return checkout.redirect(verdict), ""
    except (BadSignature, Mismatch) as exc:
        # A known payment, a notice that does not hold: nothing changes, and the browser
        # goes to the failure page (to the success page when the payment is SUCCESS).
        ctx.metrics.bad_requests.labels(exc.reason).inc()
        target = await checkout.refused_redirect(exc.txnid or notice.txnid or "", exc.reason)
        return target, exc.reason


class PaymentHandler(BaseHandler):
    name = "payment"

    async def get(self, txnid: str) -> None:
        self.write_json(await self.ctx.checkout.get_payment(validate.txnid(txnid)))


class BookingHandler(BaseHandler):
    name = "booking"

    async def get(self, booking_id: str) -> None:
        self.write_json(await self.ctx.checkout.get_booking(validate.booking_id(booking_id)))


class ReturnHandler(BaseHandler):
    """The customer's browser, sent back by the provider: always a 303 or a 400."""

    name = "payment_return"
    requires_auth = False

    async def get(self, provider: str) -> None:
        await self._return(provider)

    async def post(self, provider: str) -> None:
        await self._return(provider)

    async def _return(self, provider_name: str) -> None:
        # handlers.return_lane answers the common case without this class; the same code
        fields = self.single_fields()
        target, self.error_reason = await return_target(self.ctx, provider_name, fields)
        self.redirect(target, status=303)


class WebhookHandler(BaseHandler):
    """The provider's server-to-server notice: 200 once applied or already applied."""

    name = "payment_webhook"
    requires_auth = False

    async def post(self, provider_name: str) -> None:
        provider = self.ctx.checkout.provider(provider_name)
        notice = provider.read_webhook(self.request.headers, self.request.body)
        verdict = await self.ctx.checkout.settle(provider, notice, "webhook")
        self.write_json(verdict.body())
