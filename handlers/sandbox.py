"""Pages for development: the sandbox provider's payment page, and the demo result pages.

``/sandbox/pay`` answers only when the sandbox is on; ``/demo/success`` and ``/demo/failure``
only when they are the configured success/failure URLs (``GATEWAY_SUCCESS_URL`` /
``GATEWAY_FAILURE_URL`` unset). Otherwise both are 404.
"""

from __future__ import annotations

from typing import Any

from tornado.escape import xhtml_escape as esc

from gateway.errors import BadRequest, NotFound
from gateway.money import parse_decimal, to_decimal_string
from gateway.providers.payu import UDFS, request_hash, reverse_hash
from gateway.providers.sandbox import SANDBOX_KEY
from gateway.signing import signatures_match, verify_query
from handlers.base import BaseHandler
from store.keys import BOOKING_RE, CART_RE, TXN_RE

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem;
       color: #1d232a; }}
.banner {{ background: #fff3cd; border: 1px solid #e0b000; padding: .5rem .75rem;
           border-radius: .4rem; }}
table {{ width: 100%; border-collapse: collapse; margin: 1rem 0; }}
td, th {{ padding: .35rem .25rem; border-bottom: 1px solid #e3e6ea; text-align: left; }}
td.n, th.n {{ text-align: right; }}
button {{ font-size: 1.05rem; padding: .6rem 1.4rem; margin-right: .75rem; border-radius: .4rem;
          border: 0; cursor: pointer; }}
#pay {{ background: #1a7f37; color: #fff; }} #fail {{ background: #d1242f; color: #fff; }}
form {{ display: inline; }} code {{ background: #f3f4f6; padding: 0 .25rem; }}
</style></head><body>{body}</body></html>"""


def _items_table(items: list[dict[str, Any]], currency: str) -> str:
    rows = "".join(
        f"<tr><td>{esc(str(i['name']))}</td><td class=n>{int(i['quantity'])}</td>"
        f"<td class=n>{esc(to_decimal_string(int(i['unit_amount']), currency))}</td></tr>"
        for i in items
    )
    return (
        f"<table><tr><th>Service</th><th class=n>Qty</th><th class=n>Unit</th></tr>{rows}</table>"
    )


class HTMLHandler(BaseHandler):
    requires_auth = False

    def page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(PAGE.format(title=esc(title), body=body))


class SandboxPayHandler(HTMLHandler):
    """The sandbox provider's payment page: what PayU's hosted page is for real payments."""

    name = "sandbox_pay"

    async def get(self) -> None:
        await self._page()

    async def post(self) -> None:
        await self._page()

    async def _page(self) -> None:
        settings = self.ctx.settings
        if not settings.sandbox:
            raise NotFound("the sandbox is off", reason="sandbox_off")
        f = self.single_fields()
        required = (
            "key",
            "txnid",
            "amount",
            "productinfo",
            "firstname",
            "email",
            "surl",
            "furl",
            "hash",
        )
        missing = [n for n in required if n not in f]
        if missing:
            raise BadRequest(f"missing field(s): {', '.join(missing)}", reason="missing_field")
        own_return = f"{settings.public_url}/v1/payments/sandbox/return"
        if f["surl"] != own_return or f["furl"] != own_return:
            raise BadRequest(
                "surl and furl must be this gateway's sandbox return URL", reason="bad_field"
            )
        expected = request_hash(f, settings.sandbox_salt)
        if not (
            signatures_match(expected, f["hash"].lower()) & signatures_match(SANDBOX_KEY, f["key"])
        ):
            self.ctx.metrics.signature_failures.labels("sandbox", "page").inc()
            raise BadRequest("the payment request's hash does not verify", reason="bad_signature")
        if not TXN_RE.match(f["txnid"]) or parse_decimal(f["amount"], "INR") is None:
            raise BadRequest("txnid or amount is malformed", reason="bad_field")
        cart_id = f.get("udf1", "")
        items: list[dict[str, Any]] = []
        currency = "INR"
        if CART_RE.match(cart_id):
            try:
                cart = await self.ctx.store.get_cart(cart_id)
                items, currency = cart["items"], cart["currency"]
            except NotFound:
                pass
        forms = "".join(
            self._form(f, status, label)
            for status, label in (("success", "Pay"), ("failure", "Fail"))
        )
        body = (
            "<p class=banner><strong>Sandbox</strong>: no money moves. This page stands in "
            "for the payment provider.</p>"
            f"<h1>Pay {esc(f['amount'])} {esc(currency)}</h1>"
            f"<p>{esc(f['productinfo'])}<br>for {esc(f['firstname'])} "
            f"&lt;{esc(f['email'])}&gt;</p>"
            f"{_items_table(items, currency) if items else ''}"
            f"<p>Transaction <code id=txnid>{esc(f['txnid'])}</code></p>{forms}"
        )
        self.page("Sandbox payment", body)

    def _form(self, request: dict[str, str], status: str, label: str) -> str:
        """A form that posts back what PayU would post, signed with PayU's reverse hash."""
        fields = {
            n: request.get(n, "")
            for n in ("key", "txnid", "amount", "productinfo", "firstname", "email", *UDFS)
        }
        fields["status"] = status
        fields["mihpayid"] = f"sandbox{request['txnid'][-8:]}"
        if status == "failure":
            fields["error"] = "E_SANDBOX_DECLINED"
        fields["hash"] = reverse_hash(fields, self.ctx.settings.sandbox_salt)
        inputs = "".join(
            f'<input type=hidden name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items()
        )
        target = request["surl"] if status == "success" else request["furl"]
        return (
            f'<form method=post action="{esc(target)}">{inputs}'
            f'<button id="{"pay" if status == "success" else "fail"}" type=submit>'
            f"{label}</button></form>"
        )


class DemoResultHandler(HTMLHandler):
    """The merchant's success and failure pages, for when none are configured."""

    name = "demo_result"

    async def get(self, outcome: str) -> None:
        settings = self.ctx.settings
        if not settings.demo_pages or outcome not in ("success", "failure"):
            raise NotFound(
                "the demo pages are off: success and failure URLs are configured", reason="demo_off"
            )
        if not verify_query(self.request.query, settings.return_secret):
            self.page(
                "Not verified",
                "<h1>Not verified</h1><p id=verdict>The <code>sig</code> "
                "of this page's query does not verify: do not trust it.</p>",
                400,
            )
            return
        q = {k: v[0].decode() for k, v in self.request.query_arguments.items()}
        if outcome == "success" and BOOKING_RE.match(q.get("booking_id", "")):
            booking = await self.ctx.checkout.get_booking(q["booking_id"])
            amount = to_decimal_string(booking["amount"], booking["currency"])
            self.page(
                "Booking confirmed",
                (
                    f"<h1 id=verdict>Booking confirmed</h1>"
                    f"<p>Booking <code id=booking-id>{esc(booking['booking_id'])}</code>, "
                    f"status <strong id=booking-status>{esc(booking['status'])}</strong></p>"
                    f"{_items_table(booking['items'], booking['currency'])}"
                    f"<p>Paid <strong id=amount>{esc(amount)} {esc(booking['currency'])}</strong>"
                    f" (transaction <code>{esc(booking['txnid'])}</code>). The signature of this "
                    f"page's query verified.</p>"
                ),
            )
            return
        self.page(
            "Payment not completed",
            (
                f"<h1 id=verdict>Payment {esc(q.get('status', 'failed'))}</h1>"
                f"<p>Reason: <code id=reason>{esc(q.get('reason', ''))}</code><br>"
                f"Transaction <code>{esc(q.get('txnid', ''))}</code>. The signature of this "
                f"page's query verified.</p>"
            ),
        )
