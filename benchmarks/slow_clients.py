"""What slow clients cost the return path: the audit's slow-connection case (issue 17).

    python -m benchmarks.slow_clients [--slow 0,1,3] [--seconds 10] [--connections 10]

Starts ``gateway serve`` (one process, no write-behind in it) against its own Redis key
prefix and PostgreSQL database, pre-creates payments, and for each count of slow clients:
opens that many connections that send a return with 3,000 headers, then its 16,000-byte
body one byte a write every 0.5 ms (about 1 ms here: the timer's resolution), then,
while they trickle, measures the serving process's CPU with no other load (one core is 100 %)
and the returns per second ``wrk`` gets over ``--connections`` connections (each payment's
signed success, replayed once the list has gone round). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import asyncpg
import orjson

from benchmarks.return_rate import (
    KEY,
    SALT,
    WRK_SCRIPT,
    make_payments,
    serve_args,
    tree_cpu_s,
    wait_up,
)
from store.pg_store import migrate
from store.redis_store import RedisStore
from tests.conftest import db_url
from tests.services import free_port, postgres_admin_url, redis_url

HEADERS, BODY, BYTE_EVERY_S = 3000, 16_000, 0.0005


def slow_request() -> bytes:
    head = ["POST /v1/payments/payu/return HTTP/1.1", "Host: 127.0.0.1"]
    head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {BODY}"]
    head += [f"X-Pad-{i}: v" for i in range(HEADERS)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + b"a" * BODY


async def trickle(port: int, stop: asyncio.Event) -> None:
    """Send the slow request's head, then its body a byte per write every BYTE_EVERY_S (or
    as often as the timer runs), again on a new connection when one ends, until ``stop``."""
    data = slow_request()
    body_at = data.index(b"\r\n\r\n") + 4
    while not stop.is_set():
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            writer.write(data[:body_at])
            for i in range(body_at, len(data)):
                if stop.is_set():
                    break
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(BYTE_EVERY_S)
        except ConnectionError:
            pass
        finally:
            writer.close()


def wrk(port: int, folder: str, connections: int, seconds: int) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            os.path.join(folder, "return.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            os.path.join(folder, "bodies"),
            "1",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(found.group(1)) if found else 0.0


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    prefix = f"gwbench-{secrets.token_hex(4)}"
    admin = postgres_admin_url()
    dbname = f"gwbench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{dbname}"')
    await conn.close()
    dsn = db_url(admin, dbname)
    await migrate(dsn)
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_REDIS_URL": redis_url(),
        "GATEWAY_DATABASE_URL": dsn,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_PORT": str(port),
        "GATEWAY_API_KEYS": "bench-key-0123456789abcdef",
        "GATEWAY_RETURN_SECRET": "bench-return-secret-0123",
        "GATEWAY_SUCCESS_URL": "https://merchant.example/ok",
        "GATEWAY_FAILURE_URL": "https://merchant.example/failed",
        "GATEWAY_PAYU_KEY": KEY,
        "GATEWAY_PAYU_SALT": SALT,
        "GATEWAY_WB_IN_PROCESS": "false",
    }
    store = await RedisStore.connect(redis_url(), prefix, cart_ttl_s=3600, payment_window_s=86400)
    folder = tempfile.mkdtemp(prefix="gw-slow-")
    proc = subprocess.Popen(
        [sys.executable, *serve_args(1)], env=env, stdout=subprocess.DEVNULL, stderr=None
    )
    results = []
    try:
        bodies = await make_payments(store, 2000, 16)
        with open(os.path.join(folder, "bodies"), "w") as fh:
            fh.write("\n".join(bodies) + "\n")
        with open(os.path.join(folder, "return.lua"), "w") as fh:
            fh.write(WRK_SCRIPT)
        await asyncio.to_thread(wait_up, port, proc)
        await asyncio.to_thread(wrk, port, folder, args.connections, 3)  # warm up
        for slow in [int(n) for n in args.slow.split(",")]:
            stop = asyncio.Event()
            senders = [asyncio.create_task(trickle(port, stop)) for _ in range(slow)]
            await asyncio.sleep(2)
            cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            idle_cpu = (tree_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
            rate = await asyncio.to_thread(wrk, port, folder, args.connections, args.seconds)
            stop.set()
            await asyncio.gather(*senders)
            results.append(
                {
                    "slow_clients": slow,
                    "gateway_cpu_with_only_slow_clients": round(idle_cpu, 3),
                    "returns_per_s": rate,
                }
            )
            print(orjson.dumps(results[-1]).decode(), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(30)
        async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
            await store.client.delete(key)
        await store.close()
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", default="0,1,3", help="counts of slow clients, in turn")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
