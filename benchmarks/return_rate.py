"""The return endpoint's closed-loop throughput, with the write-behind running beside it.

    python -m benchmarks.return_rate [--payments 60000] [--seconds 10] [--connections 16]
                                     [--workers 1]

Starts ``gateway serve`` (its write-behind in-process, as deployed by default) against its
own Redis key prefix and PostgreSQL database, pre-creates payments with the real Lua
scripts, then drives correctly signed PayU success returns at it with ``wrk`` (each request
converts a distinct cart). Reports returns per second, events per second that makes for the
write-behind, how long the queue took to drain afterwards, and checks that PostgreSQL holds
exactly the bookings the run made.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

import asyncpg
import orjson

from store import keys as ids
from store.pg_store import migrate
from store.queue import queue_stats
from store.redis_store import RedisStore
from tests import payu_sign
from tests.conftest import db_url
from tests.services import free_port, postgres_admin_url, redis_url

SALT, KEY = "bench-salt-0123456789", "benchkey"
WRK_SCRIPT = """
local bodies = {}
local n, step, i = 0, 1, 0
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
  step = tonumber(args[2]); i = tonumber(args[3]) - step
end
request = function()
  i = i + step
  if i > n then i = ((i - 1) % n) + 1 end
  return wrk.format("POST", "/v1/payments/payu/return",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, bodies[i])
end
"""


async def make_payments(store: RedisStore, n: int, partitions: int) -> list[str]:
    sem = asyncio.Semaphore(64)
    bodies: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            cart = await store.create_cart(partitions, f"user-{i}", "INR")
            cid = cart["cart_id"]
            await store.change_items(cid, "add", "svc-1", "Deep cleaning", 129900, 1)
            txnid = ids.new_txnid(cid)
            await store.start_payment(cid, txnid, "payu", 2, 129900, "")
            form = {
                "key": KEY,
                "txnid": txnid,
                "amount": "1299.00",
                "productinfo": f"Booking for cart {cid}",
                "firstname": "Asha",
                "email": "asha@example.com",
                "udf1": cid,
                "udf2": "",
                "udf3": "",
                "udf4": "",
                "udf5": "",
                "status": "success",
                "mihpayid": f"m{i}",
            }
            form["hash"] = payu_sign.response_hash(form, SALT)
            bodies.append(urllib.parse.urlencode(form))

    await asyncio.gather(*(one(i) for i in range(n)))
    return bodies


def serve_args(workers: int, *extra: str) -> list[str]:
    """``python`` arguments that run ``gateway serve`` quietly with ``workers`` processes."""
    return [
        "-m",
        "gateway.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--workers",
        str(workers),
        *extra,
    ]


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (from /proc; one that has exited is left out)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except FileNotFoundError:
            continue
        out.append(p)
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_up(port: int, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the gateway did not come up")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    prefix = f"gwbench-{secrets.token_hex(4)}"
    partitions = 16
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
        "GATEWAY_PARTITIONS": str(partitions),
    }
    store = await RedisStore.connect(redis_url(), prefix, cart_ttl_s=3600, payment_window_s=86400)
    folder = tempfile.mkdtemp(prefix="gw-bench-")
    proc = subprocess.Popen(
        [sys.executable, *serve_args(args.workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(folder, "log"), "w"),  # noqa: SIM115
    )
    try:
        print(f"pre-creating {args.payments} payments", file=sys.stderr)
        bodies = await make_payments(store, args.payments, partitions)
        with open(os.path.join(folder, "bodies"), "w") as fh:
            fh.write("\n".join(bodies) + "\n")
        with open(os.path.join(folder, "return.lua"), "w") as fh:
            fh.write(WRK_SCRIPT)
        await asyncio.to_thread(wait_up, port, proc)
        await asyncio.sleep(1.0)  # let the write-behind take the pre-created events first
        stats = await queue_stats(store.client, store.keys, partitions)
        while stats.backlog:
            await asyncio.sleep(0.2)
            stats = await queue_stats(store.client, store.keys, partitions)
        print(f"wrk: {args.connections} connections, {args.seconds} s", file=sys.stderr)
        # one wrk thread: its Lua state walks the bodies, so no form is sent twice
        lags: list[float] = []
        done = asyncio.Event()

        async def sample_lag() -> None:
            # the age of the oldest event PostgreSQL does not hold yet, every 100 ms
            while not done.is_set():
                q = await queue_stats(store.client, store.keys, partitions)
                lags.append(q.oldest_age_s)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_lag())
        cpu_before = tree_cpu_s(proc.pid)
        spy = None
        if os.environ.get("GATEWAY_BENCH_PYSPY"):  # profile the gateway while wrk runs
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(proc.pid),
                    "-d",
                    str(args.seconds),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    os.environ["GATEWAY_BENCH_PYSPY"],
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        out = (
            await asyncio.to_thread(
                subprocess.run,
                [
                    "wrk",
                    "-t1",
                    f"-c{args.connections}",
                    f"-d{args.seconds}s",
                    "--latency",
                    "-s",
                    os.path.join(folder, "return.lua"),
                    f"http://127.0.0.1:{port}",
                    "--",
                    os.path.join(folder, "bodies"),
                    "1",
                    "1",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        ).stdout
        cpu_used = tree_cpu_s(proc.pid) - cpu_before
        if spy is not None:
            spy.wait(60)
        done.set()
        await sampler
        lags.sort()
        ended = time.perf_counter()
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        sent = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        stats = await queue_stats(store.client, store.keys, partitions)
        backlog_at_end = stats.backlog
        while stats.backlog:
            await asyncio.sleep(0.1)
            stats = await queue_stats(store.client, store.keys, partitions)
        drain_s = time.perf_counter() - ended
        conn = await asyncpg.connect(dsn)
        try:
            bookings = await conn.fetchval("SELECT count(*) FROM bookings")
        finally:
            await conn.close()
        # wrk does not count the requests still in flight when it stops; Redis does
        in_redis = 0
        async for _ in store.client.scan_iter(match=f"{prefix}:*:booking:*", count=1000):
            in_redis += 1
        result = {
            "workers": args.workers,
            "connections": args.connections,
            "seconds": args.seconds,
            "metrics": args.metrics,
            "log_level": args.log_level,
            "returns_per_s": rate,
            "requests": sent,
            "cpu_us_per_return": round(cpu_used / sent * 1e6, 1),
            "non_303": int(bad.group(1)) if bad else 0,
            "p99": f"{p99.group(1)}{p99.group(2)}" if p99 else None,
            "writebehind_events_per_s": rate,  # one payment.succeeded event per return
            "writebehind_lag_s": {
                "p50": lags[len(lags) // 2],
                "p99": lags[int(len(lags) * 0.99)],
                "max": lags[-1],
                "samples": len(lags),
            },
            "backlog_at_end": backlog_at_end,
            "drain_after_s": round(drain_s, 2),
            "bookings_in_redis": in_redis,
            "bookings_in_postgres": bookings,
        }
        if sent > len(bodies):
            result["note"] = "more requests than payments: replays were sent (and answered)"
        if bookings != in_redis:
            raise SystemExit(f"PostgreSQL holds {bookings} bookings, Redis {in_redis}")
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
            await store.client.delete(key)
        await store.close()
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await conn.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=60000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--metrics",
        choices=["on", "off"],
        default="on",
        help="per-request metrics (GATEWAY_REQUEST_METRICS)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["INFO", "WARNING"],
        help="INFO writes the JSON access log line per request",
    )
    print(orjson.dumps(asyncio.run(run(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())
