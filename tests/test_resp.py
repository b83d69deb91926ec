"""store/resp.py: the request path's pipelined Redis connection, against real servers."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import Settings
from gateway.errors import ConfigError
from store.resp import RedisPyCalls, RespClient, evalsha
from tests.conftest import REDIS_URL, base_env


async def test_concurrent_calls_get_their_own_replies():
    client = RespClient.from_url(REDIS_URL)
    assert client is not None
    key = f"gwtest-resp-{secrets.token_hex(4)}"
    try:
        replies = await asyncio.gather(*(client.call("ECHO", f"n{i}") for i in range(2000)))
        assert replies == [f"n{i}" for i in range(2000)]
        # types as hiredis gives them: nil, integers, bulk strings
        assert await client.call("GET", key) is None
        assert await asyncio.gather(*(client.call("INCRBY", key, 2) for _ in range(50))) == [
            2 * i for i in range(1, 51)
        ]
        assert await client.call("GET", key) == "100"
    finally:
        await client.call("DEL", key)
        await client.close()


async def test_an_error_reply_raises_and_the_connection_stays_in_step():
    client = RespClient.from_url(REDIS_URL)
    assert client is not None
    try:
        results = await asyncio.gather(
            client.call("ECHO", "before"),
            client.call("HGET", "only-one-argument"),
            client.call("ECHO", "after"),
            return_exceptions=True,
        )
        assert results[0] == "before" and results[2] == "after"
        assert isinstance(results[1], ResponseError) and "wrong number" in str(results[1])
    finally:
        await client.close()


async def test_evalsha_loads_a_script_redis_lost(own_redis):
    _, port = own_redis()
    client = RespClient.from_url(f"redis://127.0.0.1:{port}/0")
    assert client is not None
    text = "return ARGV[1] .. '!'"
    sha = await client.call("SCRIPT", "LOAD", text)
    try:
        assert await evalsha(client, sha, text, [], ["a"]) == "a!"
        await client.call("SCRIPT", "FLUSH")  # as after a restart
        assert await evalsha(client, sha, text, [], ["b"]) == "b!"
        assert await client.call("SCRIPT", "EXISTS", sha) == [1]
    finally:
        await client.close()


async def test_redis_gone_then_back(own_redis):
    proc, port = own_redis()
    client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=2, connect_timeout=1)
    assert client is not None
    try:
        assert await client.call("SET", "k", "v") == "OK"
        proc.kill()
        proc.wait(10)
        with pytest.raises(RedisConnectionError):
            await client.call("GET", "k")
        with pytest.raises(RedisConnectionError):  # nothing listens: connecting fails
            await client.call("GET", "k")
        own_redis(port=port)
        assert await client.call("GET", "k") is None  # a new, empty server
        assert await client.call("SET", "k", "w") == "OK"
    finally:
        await client.close()


async def test_a_server_that_never_answers_times_out_every_call_in_flight():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)  # reads the commands, answers nothing
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(host="127.0.0.1", port=port, timeout=0.3)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.call("PING") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        await client.close()
        server.close()


async def test_password_and_database_from_the_url(own_redis):
    _, port = own_redis("--requirepass", "s3cret-pass")
    client = RespClient.from_url(f"redis://:s3cret-pass@127.0.0.1:{port}/3")
    assert client is not None
    check = redis.asyncio.Redis.from_url(f"redis://:s3cret-pass@127.0.0.1:{port}/3")
    try:
        assert await client.call("SET", "in-db-3", "yes") == "OK"
        assert await check.get("in-db-3") == b"yes"  # the same database, seen by redis-py
        wrong = RespClient.from_url(f"redis://:wrong@127.0.0.1:{port}/0")
        assert wrong is not None
        with pytest.raises(ResponseError):
            await wrong.call("PING")
        await wrong.close()
    finally:
        await check.aclose()
        await client.close()


def test_urls_it_leaves_to_redis_py():
    assert RespClient.from_url("rediss://127.0.0.1:6380/0") is None
    assert RespClient.from_url("redis://127.0.0.1:6379/0?ssl_cert_reqs=none") is None
    unix = RespClient.from_url("unix:///run/redis.sock?db=2")
    assert unix is not None and unix.path == "/run/redis.sock" and unix.db == 2
    tcp = RespClient.from_url("redis://user:pw@h.example:7000/5")
    assert tcp is not None and (tcp.host, tcp.port, tcp.db) == ("h.example", 7000, 5)
    assert (tcp.username, tcp.password) == ("user", "pw")


async def test_the_redis_py_fallback_answers_alike():
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    calls = RedisPyCalls(client)
    try:
        assert await calls.call("ECHO", "x") == "x"
        with pytest.raises(ResponseError):
            await calls.call("HGET", "only-one-argument")
        assert await calls.call("ECHO", "y") == "y"
    finally:
        await client.aclose()


async def test_a_gateway_on_a_unix_socket_redis(own_redis, make_gw):
    """``GATEWAY_REDIS_URL=unix://…``: the whole checkout runs over the socket, on the
    pipelined connection, and the booking lands in that Redis."""
    sock_dir = tempfile.mkdtemp(prefix="gw-sock-")  # short: a socket path has 107 bytes
    sock = f"{sock_dir}/redis.sock"
    own_redis("--unixsocket", sock, "--unixsocketperm", "700")
    url = f"unix://{sock}?db=3"
    assert Settings.from_env(base_env("p", GATEWAY_REDIS_URL=url)).redis_url == url
    with pytest.raises(ConfigError, match="GATEWAY_REDIS_URL"):
        Settings.from_env(base_env("p", GATEWAY_REDIS_URL="unix://"))

    gw = await make_gw(redis_url=url)
    assert isinstance(gw.store.calls, RespClient) and gw.store.calls.path == sock
    cart = await gw.cart_with_items()
    payment = await gw.start(cart["cart_id"])
    resp = await gw.payu_return(payment)
    assert resp.code == 303 and "status=success" in resp.headers["Location"]
    booking_id = parse_qs(urlsplit(resp.headers["Location"]).query)["booking_id"][0]
    direct = redis.asyncio.Redis(unix_socket_path=sock, db=3, decode_responses=True)
    try:
        booking = await direct.hgetall(gw.store.keys.booking(booking_id))
        assert booking["status"] == "CONFIRMED" and booking["cart_id"] == cart["cart_id"]
    finally:
        await direct.aclose()
        shutil.rmtree(sock_dir, ignore_errors=True)
