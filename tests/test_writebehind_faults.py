"""Faults made for real: a worker killed mid-batch, a PostgreSQL stopped during a burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg
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
async def test_worker_killed_mid_batch(make_durable, recovery):
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


async def test_postgres_down_during_a_burst(make_durable, own_postgres):
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
