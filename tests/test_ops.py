"""``/readyz`` through outages: a Redis that restarted without the scripts, a PostgreSQL that
refuses the gateway's login."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import orjson
import redis.asyncio

from store.scripts import NAMES as SCRIPT_NAMES
from tests.conftest import PG_ADMIN_URL, REDIS_URL, base_env, drop_keys
from tests.services import free_port
from tests.test_server import wait_ready


async def test_readyz_recovers_when_redis_restarts_without_the_scripts(make_gw, own_redis):
    proc, port = own_redis()
    gw = await make_gw(redis_url=f"redis://127.0.0.1:{port}/0")
    r = await gw.fetch("GET", "/readyz", auth=False)
    assert r.code == 200, r.body
    proc.kill()
    proc.wait()
    own_redis(port=port)  # a new server: it knows none of the gateway's scripts
    deadline = time.monotonic() + 10
    while True:  # no merchant traffic: only the readiness probe itself
        r = await gw.fetch("GET", "/readyz", auth=False)
        if r.code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    body = orjson.loads(r.body)
    assert r.code == 200 and body["checks"]["scripts"] is True, body
    # and the scripts are really there, loaded by the probe (no request has needed one)
    shas = [getattr(gw.store.scripts, name).sha for name in SCRIPT_NAMES]
    restarted = redis.asyncio.Redis(port=port)
    try:
        assert await restarted.script_exists(*shas) == [True] * len(shas)
    finally:
        await restarted.aclose()
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u1", "currency": "INR"})
    assert cart["status"] == "ACTIVE"


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


async def test_readyz_reports_a_postgres_that_refuses_the_login(prefix, razorpay_api):
    """The write-behind runs in its own process (--workers 2): the serving processes learn
    of its failures through Redis."""
    parts = urllib.parse.urlsplit(PG_ADMIN_URL)
    password = "s3cret-pw-never-shown"
    host = parts.hostname or "127.0.0.1"
    refused = f"postgresql://gw_no_such_role:{password}@{host}:{parts.port or 5432}/gateway"
    port = free_port()
    env = base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_DATABASE_URL=refused,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        deadline = time.monotonic() + 20
        while True:
            code, body = await asyncio.to_thread(readyz, port)
            wb = body.get("writebehind") or {}
            if (wb.get("failing_for_s") or 0) > 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        # its class and SQLSTATE: not the role, database or host it names (no auth here)
        assert "SQLSTATE 28000" in (wb.get("last_error") or ""), body
        assert "gw_no_such_role" not in orjson.dumps(body).decode()
        assert wb["failing_for_s"] > 1 and wb["failing_since"], body
        assert body["checks"]["postgres"] is False, body
        # decision 11: PostgreSQL failing degrades readiness, it does not fail it
        assert code == 200 and body["status"] == "degraded", body
        assert password not in orjson.dumps(body).decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        await drop_keys(REDIS_URL, prefix)
    assert password not in err.decode()
