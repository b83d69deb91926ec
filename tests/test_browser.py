"""End to end in a real browser: headless Chromium opens the demo URL, clicks Pay, and lands
on the success page showing the booking; the booking is then checked over the API and in
PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import asyncpg
import pytest

from tests.conftest import drop_keys
from tests.services import free_port
from tests.test_sandbox import gateway_cli, sandbox_env
from tests.test_server import wait_ready

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium is not installed (Debian: apt-get install chromium chromium-driver)",
)


def browser(profile: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def test_pay_in_chromium(prefix, database_url):
    port = free_port()
    env = {
        **os.environ,
        **sandbox_env(prefix, GATEWAY_PORT=str(port), GATEWAY_DATABASE_URL=database_url),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    profile = tempfile.mkdtemp(prefix="gw-chromium-")
    driver = None
    try:
        await asyncio.to_thread(wait_ready, port, serve)
        shown = await gateway_cli(env, "demo")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        url = shown.stdout.strip().splitlines()[-1]
        assert url.startswith(f"http://127.0.0.1:{port}/sandbox/pay?")

        def click_pay() -> tuple[str, str, str]:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions as ec
            from selenium.webdriver.support.ui import WebDriverWait

            nonlocal driver
            driver = browser(profile)
            driver.set_page_load_timeout(30)
            driver.get(url)
            assert "Sandbox payment" in driver.title
            assert "Deep home cleaning" in driver.page_source
            driver.find_element(By.ID, "pay").click()
            WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "booking-id")))
            return (
                driver.current_url,
                driver.find_element(By.ID, "booking-id").text,
                driver.find_element(By.ID, "booking-status").text,
            )

        landed, booking_id, status = await asyncio.wait_for(asyncio.to_thread(click_pay), 120)
        assert landed.startswith(f"http://127.0.0.1:{port}/demo/success?")
        assert booking_id.startswith("b") and status == "CONFIRMED"

        # the booking over the API ...
        import urllib.request

        from tests.conftest import API_KEY

        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/bookings/{booking_id}",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert b'"CONFIRMED"' in r.read()
        # ... and in PostgreSQL, once the write-behind has written it
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(100):
                row = await conn.fetchrow(
                    "SELECT status, amount FROM bookings WHERE booking_id = $1", booking_id
                )
                if row:
                    break
                await asyncio.sleep(0.1)
            assert row is not None and row["status"] == "CONFIRMED"
            assert row["amount"] == 249900 + 3 * 39900
        finally:
            await conn.close()
    finally:
        if driver is not None:
            await asyncio.wait_for(asyncio.to_thread(driver.quit), 30)
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        shutil.rmtree(profile, ignore_errors=True)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)
