"""The sandbox provider, its payment page, the demo result pages, and ``gateway demo``."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import pytest

from gateway.config import Settings
from gateway.demo import _Forms
from tests.conftest import API_KEY, REDIS_URL, RETURN_SECRET, drop_keys, open_gateway
from tests.services import free_port
from tests.test_server import wait_ready

CUSTOMER = {"firstname": "Asha", "email": "asha@example.com", "phone": "+919876543210"}


def sandbox_env(prefix: str, **extra: str) -> dict[str, str]:
    """No provider credentials and no success/failure URLs: sandbox and demo pages on."""
    return {
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_API_KEYS": API_KEY,
        "GATEWAY_RETURN_SECRET": RETURN_SECRET,
        **extra,
    }


async def gateway_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` run to its end, its output captured."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def sgw(prefix):
    port = free_port()
    settings = Settings.from_env(sandbox_env(prefix, GATEWAY_PORT=str(port)))
    assert settings.sandbox and settings.demo_pages
    client, server = await open_gateway(settings)
    # open_gateway listens on a port of its own; the pages must name that one
    client_port = int(client.base_url.rsplit(":", 1)[1])
    settings = settings.at(settings.host, client_port)
    client.app.settings["ctx"].settings = settings
    client.app.settings["ctx"].checkout.settings = settings
    client.app.settings["ctx"].checkout.providers[
        "sandbox"
    ].payment_url = f"{settings.public_url}/sandbox/pay"
    client.settings = settings
    yield client
    server.stop()
    await server.close_all_connections()
    await client.close()
    await client.store.close()
    await drop_keys(REDIS_URL, prefix)


async def sandbox_payment(gw):
    cart = await gw.cart_with_items(items=2)
    payment = await gw.start(cart["cart_id"], "sandbox")
    redirect = payment["redirect"]
    assert redirect["url"] == f"{gw.settings.public_url}/sandbox/pay"
    return cart, payment, f"{redirect['url']}?{urlencode(redirect['fields'])}"


async def open_page(gw, url):
    resp = await gw.fetch("GET", url.removeprefix(gw.base_url), auth=False)
    assert resp.code == 200, resp.body
    forms = _Forms()
    forms.feed(resp.body.decode())
    return resp.body.decode(), forms.forms


async def press(gw, form):
    return await gw.fetch(
        "POST", form["action"].removeprefix(gw.base_url), form=form["fields"], auth=False
    )


async def test_pay_in_the_sandbox(sgw):
    cart, payment, url = await sandbox_payment(sgw)
    html, forms = await open_page(sgw, url)
    assert "Sandbox" in html and "1,000" not in html
    assert "Service 0" in html and "Service 1" in html
    amount = f"{cart['total_amount'] // 100}.{cart['total_amount'] % 100:02d}"
    assert f"Pay {amount} INR" in html
    assert set(forms) == {"pay", "fail"}
    resp = await press(sgw, forms["pay"])
    assert resp.code == 303
    location = resp.headers["Location"]
    assert location.startswith(f"{sgw.settings.public_url}/demo/success?")
    query = dict(parse_qsl(urlsplit(location).query))
    page = await sgw.fetch("GET", location.removeprefix(sgw.base_url), auth=False)
    assert page.code == 200 and b"Booking confirmed" in page.body
    assert query["booking_id"].encode() in page.body
    booking = await sgw.json("GET", f"/v1/bookings/{query['booking_id']}")
    assert booking["status"] == "CONFIRMED" and booking["txnid"] == payment["txnid"]
    assert (await sgw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "CONVERTED"


async def test_fail_in_the_sandbox(sgw):
    cart, payment, url = await sandbox_payment(sgw)
    _, forms = await open_page(sgw, url)
    resp = await press(sgw, forms["fail"])
    assert resp.code == 303
    location = resp.headers["Location"]
    assert location.startswith(f"{sgw.settings.public_url}/demo/failure?")
    page = await sgw.fetch("GET", location.removeprefix(sgw.base_url), auth=False)
    assert page.code == 200 and b"payment_failed" in page.body
    pay = await sgw.json("GET", f"/v1/payments/{payment['txnid']}")
    assert pay["status"] == "FAILED" and pay["reason"] == "E_SANDBOX_DECLINED"
    assert (await sgw.json("GET", f"/v1/carts/{cart['cart_id']}"))["status"] == "ACTIVE"


async def test_the_sandbox_checks_what_it_is_given(sgw):
    _, payment, url = await sandbox_payment(sgw)
    fields = dict(payment["redirect"]["fields"])
    fields["amount"] = "1.00"  # tampered after signing
    r = await sgw.fetch("GET", f"/sandbox/pay?{urlencode(fields)}", auth=False)
    assert r.code == 400 and b"hash does not verify" in r.body
    fields = dict(payment["redirect"]["fields"], surl="https://evil.example/")
    r = await sgw.fetch("GET", f"/sandbox/pay?{urlencode(fields)}", auth=False)
    assert r.code == 400
    # a forged Pay form (tampered amount) is refused by the real return path
    _, forms = await open_page(sgw, url)
    forged = dict(forms["pay"], fields={**forms["pay"]["fields"], "amount": "1.00"})
    resp = await press(sgw, forged)
    assert resp.code == 303 and "reason=bad_signature" in resp.headers["Location"]
    # the demo pages refuse a query whose sig does not verify
    r = await sgw.fetch(
        "GET", "/demo/success?txnid=t&booking_id=b&status=success&sig=00", auth=False
    )
    assert r.code == 400


async def test_a_non_ascii_hash_on_the_sandbox_page_does_not_verify(sgw):
    _, payment, _ = await sandbox_payment(sgw)
    for signature in ("é", "\U0001f600"):
        fields = dict(payment["redirect"]["fields"], hash=signature)
        r = await sgw.fetch("GET", f"/sandbox/pay?{urlencode(fields)}", auth=False)
        assert r.code == 400 and b"hash does not verify" in r.body, r.body
    r = await sgw.fetch(
        "GET", "/demo/failure?txnid=t&status=failed&reason=x&sig=%C3%A9", auth=False
    )
    assert r.code == 400 and b"Not verified" in r.body


async def test_readyz_says_sandbox_loudly(sgw):
    body = await sgw.json("GET", "/readyz", auth=False)
    assert body["sandbox"] is True and "SANDBOX MODE" in body["warning"]
    assert "sandbox" in body["providers"]


async def test_sandbox_and_demo_pages_are_off_in_production(gw):
    assert not gw.settings.sandbox and not gw.settings.demo_pages
    assert (await gw.fetch("GET", "/sandbox/pay?x=1", auth=False)).code == 404
    assert (await gw.fetch("GET", "/demo/success?sig=1", auth=False)).code == 404
    r = await gw.fetch(
        "POST",
        "/v1/carts/c00aaaaaaaaaaaaaa/payments",
        json={"provider": "sandbox", "customer": CUSTOMER},
    )
    assert r.code == 422
    body = await gw.json("GET", "/readyz", auth=False)
    assert body["sandbox"] is False and body["warning"] is None


def test_settings_turn_the_sandbox_on():
    base = sandbox_env("p")
    assert Settings.from_env(base).sandbox
    with_payu = {**base, "GATEWAY_PAYU_KEY": "k", "GATEWAY_PAYU_SALT": "s"}
    assert not Settings.from_env(with_payu).sandbox
    assert Settings.from_env({**with_payu, "GATEWAY_SANDBOX": "true"}).sandbox
    moved = Settings.from_env(base).at("127.0.0.1", 9999)
    assert moved.success_url == "http://127.0.0.1:9999/demo/success"
    configured = Settings.from_env({**base, "GATEWAY_SUCCESS_URL": "https://m.example/ok"})
    assert configured.at("127.0.0.1", 9999).success_url == "https://m.example/ok"
    assert dataclasses.replace(configured).demo_pages  # the failure page is still the demo's


async def test_gateway_demo_auto(prefix, database_url):
    port = free_port()
    env = {
        **os.environ,
        **sandbox_env(prefix, GATEWAY_PORT=str(port), GATEWAY_DATABASE_URL=database_url),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_ready, port, serve)
        shown = await gateway_cli(env, "demo")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert f"http://127.0.0.1:{port}/sandbox/pay?" in shown.stdout
        auto = await gateway_cli(env, "demo", "--auto")
        assert auto.returncode == 0, auto.stdout + auto.stderr
        booking = orjson.loads(auto.stdout[auto.stdout.index("{") :])
        assert booking["status"] == "CONFIRMED" and len(booking["items"]) == 2
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
        await drop_keys(REDIS_URL, prefix)
    assert b"SANDBOX MODE" in err and b"services chosen" in err
