"""Faults made for real: a worker killed mid-batch, a PostgreSQL stopped during a burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import asyncpg
import orjson
import pytest

from store.queue import queue_stats
from store.writebehind import GROUP
from tests import services
from tests.conftest import base_env


def worker_process(gw, name: str) -> subprocess.Popen[bytes]:
    env = base_env(
        gw.settings.redis_prefix,
        GATEWAY_REDIS_URL=gw.settings.redis_url,
        GATEWAY_DATABASE_URL=gw.settings.database_url,
        GATEWAY_WB_CLAIM_IDLE_S="1",
        GATEWAY_WB_MAX_WAIT_MS="20",
        GATEWAY_WB_TRIM_INTERVAL_S="0",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--name", name],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def pending_of(gw, consumer_prefix: str) -> int:
    total = 0
    for p in range(gw.settings.partitions):
        for c in await gw.redis.xinfo_consumers(gw.keys.stream(p), GROUP):
            if c["name"].startswith(consumer_prefix):
                total += int(c["pending"])
    return total


@pytest.mark.parametrize("recovery", ["another-worker-claims", "same-worker-restarts"])
async def test_worker_killed_mid_batch(make_durable, recovery, figures):
    gw = await make_durable(worker=False)
    await gw.checkouts(1)  # creates the groups' streams
    first = worker_process(gw, "victim")
    try:
        # hold the bookings table so the worker's batch transaction hangs mid-write
        blocker = await asyncpg.connect(gw.settings.database_url)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
        n = 300
        await gw.checkouts(n - 1)
        deadline = asyncio.get_running_loop().time() + 30
        while await pending_of(gw, "victim") == 0:
            assert asyncio.get_running_loop().time() < deadline, "worker took nothing"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert await pending_of(gw, "victim") > 0
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await tx.rollback()
        await blocker.close()
        assert await gw.count("SELECT count(*) FROM bookings") == 0
        second = worker_process(gw, "victim" if recovery == "same-worker-restarts" else "rescuer")
        try:
            await gw.drained(timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(second.communicate, timeout=20)
            assert second.returncode == 0, err.decode()[-3000:]
        assert await gw.count("SELECT count(*) FROM bookings") == n
        assert await gw.count("SELECT count(*) FROM carts WHERE status = 'CONVERTED'") == n
        assert await gw.count("SELECT count(*) FROM payments WHERE status = 'SUCCESS'") == n
        assert await pending_of(gw, "victim") == 0
        figures(success_303=n, bookings_postgres=n, lost=0, doubled=0)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(10)


@pytest.fixture
def own_postgres():
    try:
        pg = services.OwnPostgres()
    except (RuntimeError, subprocess.CalledProcessError, LookupError) as exc:
        pytest.skip(f"cannot start a PostgreSQL of the test's own: {exc}")
    pg.start()
    yield pg
    pg.remove()


async def test_postgres_down_during_a_burst(make_durable, own_postgres, figures):
    gw = await make_durable(database=own_postgres.url)
    await gw.checkouts(100)
    own_postgres.stop("immediate")
    await gw.checkouts(200)  # every return still answers its 303 (asserted inside)
    stats_seen = await gw.fetch("GET", "/metrics")
    assert b'gateway_writebehind_retries_total{reason="postgres"}' in stats_seen.body
    backlog = 0
    for p in range(gw.settings.partitions):
        backlog += await gw.redis.xlen(gw.keys.stream(p))
    assert backlog > 0
    # the worker says so in Redis, where every process's /readyz reads it
    deadline = time.monotonic() + 30
    stats = await queue_stats(gw.redis, gw.keys, gw.settings.partitions)
    while stats.postgres_error is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        stats = await queue_stats(gw.redis, gw.keys, gw.settings.partitions)
    assert stats.postgres_error and stats.postgres_failing_since_ms, stats
    own_postgres.start()
    await gw.drained(timeout=90)
    stats = await queue_stats(gw.redis, gw.keys, gw.settings.partitions)
    assert stats.postgres_error is None and stats.postgres_failing_since_ms is None, stats
    assert await gw.count("SELECT count(*) FROM bookings") == 300
    assert await gw.count("SELECT count(*) FROM carts WHERE status = 'CONVERTED'") == 300
    assert await gw.count("SELECT count(*) FROM payments WHERE status = 'SUCCESS'") == 300
    figures(success_303=300, backlog_while_down=backlog, bookings_postgres=300, lost=0, doubled=0)


async def test_redis_killed_under_load(make_durable, own_redis, figures):
    """Redis (AOF, fsync always) SIGKILLed and restarted in the middle of a checkout load.

    Customers go on through it as browsers and providers do: a 503 is tried again, a return
    with the same signed form (the same txnid). Every success answered has its booking in
    Redis and exactly one in PostgreSQL; nothing acknowledged before the kill is lost."""
    proc, port = own_redis("--appendonly", "yes", "--appendfsync", "always")
    folder = own_redis.folder(proc)
    gw = await make_durable(redis=f"redis://127.0.0.1:{port}/0")
    loop = asyncio.get_running_loop()
    tally = {"requests": 0, "503": 0, "303_success": 0}
    booked: dict[str, str] = {}  # cart id -> booking id of its success redirect

    async def again(call, *args, **kw):
        deadline = loop.time() + 60
        while True:
            resp = await call(*args, **kw)
            tally["requests"] += 1
            if resp.code != 503:
                return resp
            tally["503"] += 1
            assert loop.time() < deadline, "Redis back, yet still 503"
            await asyncio.sleep(0.05)

    async def customer(n: int) -> None:
        for _ in range(n):
            created = await again(
                gw.fetch, "POST", "/v1/carts", json={"user_id": "u-1", "currency": "INR"}
            )
            assert created.code == 201, created.body
            cart_id = orjson.loads(created.body)["cart_id"]
            item = {"service_id": "svc", "name": "Clean", "unit_amount": 149900, "quantity": 1}
            added = await again(gw.fetch, "POST", f"/v1/carts/{cart_id}/items", json=item)
            assert added.code == 200, added.body
            customer_ = {"firstname": "Asha", "email": "a@example.com", "phone": "+919876543210"}
            started = await again(
                gw.fetch,
                "POST",
                f"/v1/carts/{cart_id}/payments",
                json={"provider": "payu", "customer": customer_},
            )
            if started.code == 409:  # its first try ran before the kill, its answer was lost
                cart = orjson.loads((await again(gw.fetch, "GET", f"/v1/carts/{cart_id}")).body)
                assert cart["status"] == "CHECKOUT", cart
                continue  # a customer who lost the page; the cart expires unpaid
            assert started.code == 201, started.body
            payment = orjson.loads(started.body)
            done = await again(gw.payu_return, payment)
            assert done.code == 303 and "status=success" in done.headers["Location"], done.body
            tally["303_success"] += 1
            query = dict(
                urllib.parse.parse_qsl(urllib.parse.urlsplit(done.headers["Location"]).query)
            )
            assert booked.setdefault(cart_id, query["booking_id"]) == query["booking_id"]

    load = asyncio.gather(*(customer(25) for _ in range(16)))
    await asyncio.sleep(1.0)
    proc.kill()
    proc.wait(10)
    await asyncio.sleep(0.5)
    own_redis("--appendonly", "yes", "--appendfsync", "always", port=port, folder=folder)
    await asyncio.wait_for(load, 120)
    await gw.drained(timeout=90)

    in_redis = 0
    for booking_id in booked.values():
        if await gw.redis.exists(gw.keys.booking(booking_id)):
            in_redis += 1
    rows = {
        r["cart_id"]: r["booking_id"]
        for r in await gw.pg.pool.fetch("SELECT cart_id, booking_id FROM bookings")
    }
    lost = sum(1 for c, b in booked.items() if rows.get(c) != b) + len(booked) - in_redis
    doubled = await gw.count(
        "SELECT count(*) FROM (SELECT cart_id FROM payments WHERE status = 'SUCCESS'"
        " AND NOT refund_required GROUP BY cart_id HAVING count(*) > 1) d"
    )
    figures(
        requests=tally["requests"],
        answered_503=tally["503"],
        success_303=tally["303_success"],
        bookings_redis=in_redis,
        bookings_postgres=len(rows),
        lost=lost,
        doubled=doubled,
    )
    assert tally["503"] > 0, "the kill fell outside the load: nothing was tested"
    assert len(booked) == tally["303_success"] > 0
    assert lost == 0 and doubled == 0
    assert len(rows) == len(booked)
    assert await gw.count("SELECT count(*) FROM carts WHERE status = 'CONVERTED'") == len(booked)
