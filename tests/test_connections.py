"""The serving process's connections: time bounds, the cap, the descriptor limit.

Slow clients must not hold a serving process: a body that does not arrive within
``GATEWAY_BODY_TIMEOUT_S`` of its head closes its connection (on the lane's connections
and on Tornado's), the process raises its descriptor limit at start, and at
``GATEWAY_MAX_CONNECTIONS`` it sheds (evicting the connection that waited longest for its
request, else refusing the new one) and says so in its log and metrics, so that health
probes still get through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from handlers import connections
from tests.conftest import API_KEY, REDIS_URL, Client, base_env, drop_keys, open_gateway
from tests.services import free_port
from tests.test_return_lane import port_of, read_answer
from tests.test_server import wait_ready

HALF_RETURN = b"POST /v1/payments/payu/return HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """The server closed the connection within ``seconds`` (without answering)."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.fixture
async def gateways(settings: Any, monkeypatch: Any) -> AsyncIterator[Any]:
    """Factory: a gateway with changed settings; every one closed afterwards."""
    monkeypatch.setattr(connections, "TICK_S", 0.1)
    opened: list[tuple[Client, Any]] = []

    async def factory(**changes: Any) -> tuple[Client, Any]:
        pair = await open_gateway(dataclasses.replace(settings, **changes))
        opened.append(pair)
        return pair

    yield factory
    for client, server in opened:
        server.stop()
        await server.close_all_connections()
        await client.close()
        await client.store.close()
    await drop_keys(settings.redis_url, settings.redis_prefix)


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "tornado"])
async def test_a_body_that_does_not_come_closes_its_connection(gateways, lane):
    """Half a body, then nothing: closed once the body timeout has passed, not held."""
    gw, _ = await gateways(return_lane=lane, body_timeout_s=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    head = (
        "POST /v1/payments/payu/return HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b"status=success&txnid=")
    await writer.drain()
    started = time.monotonic()
    assert await closed_within(reader, 10), "the connection was held past the body timeout"
    assert time.monotonic() - started >= 0.5
    writer.close()
    got = await gw.fetch("GET", "/healthz", auth=False)
    assert got.code == 200


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "tornado"])
async def test_a_body_that_keeps_trickling_is_closed_too(gateways, lane):
    """A byte now and then does not extend the body's time: the bound is from the head."""
    gw, _ = await gateways(return_lane=lane, body_timeout_s=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(HALF_RETURN + b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    closed = False
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        closed = await closed_within(reader, 0.2)
    writer.close()
    assert closed, "a body sent a byte every 0.2 s was never cut off"


async def test_at_the_cap_the_longest_waiting_connection_makes_room(gateways):
    """The lane's connections stuck in a head are evicted, oldest first, so a probe gets
    through; the shedding is counted and logged."""
    gw, server = await gateways(max_connections=16)
    assert server.connections.cap == 16
    stuck = []
    for _ in range(16):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        writer.write(HALF_RETURN)
        await writer.drain()
        stuck.append((reader, writer))
    await asyncio.sleep(0.1)
    for _ in range(5):
        probe = await gw.fetch("GET", "/healthz", auth=False)
        assert probe.code == 200
    assert await closed_within(stuck[0][0], 5), "the oldest waiting connection is evicted"
    shed = gw.app.settings["ctx"].metrics.connections_shed  # type: ignore[attr-defined]
    assert shed.labels("evicted")._value.get() >= 1
    for _, writer in stuck:
        writer.close()


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "tornado"])
async def test_at_the_cap_an_idle_keep_alive_connection_of_tornados_makes_room(gateways, lane):
    """Connections Tornado holds, idle after an answer, are evicted too (oldest first)."""
    gw, server = await gateways(return_lane=lane, max_connections=16)
    idle = []
    for _ in range(16):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        writer.write(HEALTH)
        await writer.drain()
        answer = await asyncio.wait_for(read_answer(reader), 5)
        assert answer is not None and answer[0] == 200
        idle.append((reader, writer))
    await asyncio.sleep(0.1)
    assert server.connections.open == 16
    probe = await gw.fetch("GET", "/healthz", auth=False)
    assert probe.code == 200
    assert await closed_within(idle[0][0], 5), "the longest idle connection is evicted"
    for _, writer in idle:
        writer.close()


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "tornado"])
async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(
    gateways, razorpay_api, caplog, lane
):
    """16 requests being answered (Razorpay's Orders API holds them): the 17th connection
    is refused, logged and counted; once they are answered, the count is back to 0."""
    gw, server = await gateways(return_lane=lane, max_connections=16)
    carts = [await gw.cart_with_items(items=1) for _ in range(16)]
    razorpay_api.gate = asyncio.Event()
    busy = []
    body = b'{"provider": "razorpay", "customer": {"firstname": "Asha", '
    body += b'"email": "asha@example.com", "phone": "+919876543210"}}'
    for cart in carts:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        head = (
            f"POST /v1/carts/{cart['cart_id']}/payments HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        busy.append((reader, writer))
    ctx = gw.app.settings["ctx"]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while ctx.in_flight < 16 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert ctx.in_flight == 16
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(HEALTH)
    await writer.drain()
    assert await closed_within(reader, 5), "the 17th connection is refused"
    writer.close()
    assert "connection cap reached" in caplog.text
    assert ctx.metrics.connections_shed.labels("refused")._value.get() >= 1
    razorpay_api.gate.set()
    for reader, writer in busy:
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert answer is not None and answer[0] == 201, answer
        writer.close()
    deadline = time.monotonic() + 5
    while server.connections.open and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.connections.open == 0
    probe = await gw.fetch("GET", "/healthz", auth=False)
    assert probe.code == 200


async def test_the_count_comes_back_to_zero(gateways):
    """Every way a lane connection ends takes it off the count: its answer and close, a
    hand-over and Tornado's close, an eviction, the idle sweep, the client leaving."""
    gw, server = await gateways(max_connections=16, idle_timeout_s=1)
    count = server.connections
    ways = []
    for request in (HEALTH, HALF_RETURN, b""):  # handed over, stuck in a head, idle
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        if request:
            writer.write(request)
            await writer.drain()
        ways.append((reader, writer))
    await asyncio.sleep(0.2)
    assert count.open == 3
    ways[0][1].close()  # the client leaves Tornado's connection
    for _ in range(20):  # at the cap: evictions
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
        writer.write(HALF_RETURN)
        await writer.drain()
        ways.append((reader, writer))
    await asyncio.sleep(0.2)
    assert count.open <= 16
    deadline = time.monotonic() + 10  # the sweep closes the rest (idle_timeout_s=1)
    while count.open and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert count.open == 0
    for _, writer in ways:
        writer.close()


def low_descriptor_limit() -> None:
    """In the child, before exec: a soft limit of 256 under a higher hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2048,
    reason="the hard descriptor limit is too low to raise past 1,000 connections",
)
def test_a_thousand_slow_clients_leave_room_for_health_probes(prefix, database_url):
    """1,000 connections stuck in a head against a process started with 256 descriptors:
    it raised its limit, so 40 of 40 probes are answered."""
    port = free_port()
    env = base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_DATABASE_URL=database_url,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=low_descriptor_limit,
    )
    stuck: list[socket.socket] = []
    try:
        wait_ready(port, proc)
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(HALF_RETURN)
            stuck.append(sock)
        answered = 0
        for _ in range(40):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    answered += r.status == 200
            except OSError:
                pass
        assert answered == 40, f"{answered} of 40 health probes answered"
    finally:
        for sock in stuck:
            sock.close()
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
        asyncio.run(drop_keys(REDIS_URL, prefix))
    assert b'"descriptor_limit"' in err
