"""``gateway demo``: a checkout on a running gateway through its sandbox provider.

It creates a cart with two services, starts a sandbox payment and prints the page to open.
With ``--auto`` it plays the browser too: opens the sandbox page, presses Pay, follows the
303 to the success page, and prints the booking.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from typing import Any, TextIO

import orjson

from gateway.config import Settings


class DemoError(RuntimeError):
    pass


class _Forms(HTMLParser):
    """The forms of a page: action, method and hidden inputs, by the id of their button."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = {
                "action": a.get("action", ""),
                "method": a.get("method", "get"),
                "fields": {},
            }
        elif tag == "input" and self._current is not None:
            self._current["fields"][a.get("name", "")] = a.get("value", "")
        elif tag == "button" and self._current is not None and a.get("id"):
            self.forms[a["id"]] = self._current

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _call(
    method: str,
    url: str,
    key: str | None = None,
    body: Any = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    data = None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if not url.startswith(("http://", "https://")):
        raise DemoError(f"not an http(s) URL: {url[:80]}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DemoError(
            f"the gateway at {url.split('/v1')[0]} does not answer ({exc}); "
            "start it first: make run"
        ) from None


def _json(status: int, body: bytes, expect: int, what: str) -> Any:
    if status != expect:
        detail = body.decode(errors="replace")[:300]
        raise DemoError(f"{what}: HTTP {status}: {detail}")
    return orjson.loads(body)


def checkout(base: str, key: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Cart with two services, sandbox payment; returns (cart, payment, page URL)."""
    s, _, b = _call("POST", f"{base}/v1/carts", key, {"user_id": "demo-user", "currency": "INR"})
    cart = _json(s, b, 201, "create the cart")
    for item in (
        {
            "service_id": "deep-clean",
            "name": "Deep home cleaning",
            "unit_amount": 249900,
            "quantity": 1,
        },
        {
            "service_id": "sofa-shampoo",
            "name": "Sofa shampoo (per seat)",
            "unit_amount": 39900,
            "quantity": 3,
        },
    ):
        s, _, b = _call("POST", f"{base}/v1/carts/{cart['cart_id']}/items", key, item)
        cart = _json(s, b, 200, "add a service")
    s, _, b = _call(
        "POST",
        f"{base}/v1/carts/{cart['cart_id']}/payments",
        key,
        {
            "provider": "sandbox",
            "customer": {
                "firstname": "Asha",
                "email": "asha@example.com",
                "phone": "+919876543210",
            },
        },
    )
    if s == 422:
        raise DemoError(
            "the gateway's sandbox is off: start it with GATEWAY_SANDBOX=true "
            "(or without provider credentials)"
        )
    payment = _json(s, b, 201, "start the payment")
    redirect = payment["redirect"]
    page = f"{redirect['url']}?{urllib.parse.urlencode(redirect['fields'])}"
    return cart, payment, page


def pay(page: str, button: str = "pay") -> str:
    """Open the sandbox page, press a button, and return where the gateway's 303 leads."""
    s, _, body = _call("GET", page)
    if s != 200:
        raise DemoError(f"the sandbox page answered HTTP {s}")
    forms = _Forms()
    forms.feed(body.decode())
    form = forms.forms.get(button)
    if form is None:
        raise DemoError(f"no {button!r} button on the sandbox page")
    s, headers, body = _call("POST", form["action"], form=form["fields"])
    location = headers.get("Location", "")
    if s != 303 or not location:
        raise DemoError(f"the return answered HTTP {s}, not a 303: {body[:200]!r}")
    return location


def demo(
    settings: Settings, out: TextIO, *, auto: bool = False, base_url: str | None = None
) -> int:
    base = (base_url or settings.public_url).rstrip("/")
    key = settings.api_keys[0]
    try:
        cart, payment, page = checkout(base, key)
        print(
            f"cart {cart['cart_id']}: {len(cart['items'])} services, total "
            f"{cart['total_amount']} paise; sandbox payment {payment['txnid']}",
            file=out,
        )
        if not auto:
            print(f"open this page to pay:\n{page}", file=out)
            return 0
        location = pay(page)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if query.get("status") != "success":
            raise DemoError(f"the payment did not succeed: {location}")
        s, _, body = _call("GET", location)
        if s != 200 or b"Booking confirmed" not in body:
            raise DemoError(f"the success page answered HTTP {s}")
        s, _, b = _call("GET", f"{base}/v1/bookings/{query['booking_id']}", key)
        booking = _json(s, b, 200, "read the booking")
        print(f"paid; redirected to {location}", file=out)
        print(orjson.dumps(booking, option=orjson.OPT_INDENT_2).decode(), file=out)
        return 0
    except DemoError as exc:
        print(f"gateway demo: {exc}", file=out)
        return 1
