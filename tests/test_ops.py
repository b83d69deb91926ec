"""``/readyz`` through outages: a Redis that restarted without the scripts."""

from __future__ import annotations

import asyncio
import time

import orjson


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
    # and the scripts are really there: a cart can be made
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u1", "currency": "INR"})
    assert cart["status"] == "ACTIVE"
