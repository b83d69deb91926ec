"""Write-behind benchmarks: the three ways to write a batch, and the drain rate.

    python -m benchmarks.writebehind [--checkouts 20000] [--json out.json]

1. Methods: the rows of real checkout events written in batches of 100/500/2000 rows with
   (a) ``executemany`` of a one-row upsert, (b) one ``INSERT … SELECT FROM unnest(…) ON
   CONFLICT`` per table (what the gateway uses), (c) COPY into a temporary staging table,
   then ``INSERT … SELECT … ON CONFLICT``. Rows per second, fresh tables each run.
2. Drain rate: ``--checkouts`` checkouts made with the real Lua scripts fill the streams; a
   ``WriteBehind`` worker with batch size 100/500/2000 drains them into a fresh database.
   Events per second, and the worker's CPU seconds per 1,000 events.

Uses TEST_REDIS_URL / TEST_DATABASE_URL like the tests (local servers by default), its own
key prefix and databases, and removes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import statistics
import sys
import time
from typing import Any

import asyncpg
import orjson
import uvloop

from store import keys as ids
from store.events import BOOKING_COLUMNS, CART_COLUMNS, PAYMENT_COLUMNS, Rows
from store.pg_store import PgStore, migrate, write_rows
from store.queue import GROUP, queue_stats
from store.redis_store import RedisStore
from store.writebehind import WriteBehind, WriteBehindConfig
from tests.conftest import db_url
from tests.services import postgres_admin_url, redis_url

SIZES = [100, 500, 2000]
TABLES = (
    ("carts", CART_COLUMNS, "cart_id"),
    ("payments", PAYMENT_COLUMNS, "txnid"),
    ("bookings", BOOKING_COLUMNS, "booking_id"),
)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def make_checkouts(store: RedisStore, n: int, partitions: int) -> None:
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            cart = await store.create_cart(partitions, f"user-{i}", "INR")
            cid = cart["cart_id"]
            for k in range(1 + i % 3):
                await store.change_items(cid, "add", f"svc-{k}", f"Service {k}", 49900, 1)
            raw = await store.get_cart_raw(cid)
            txnid = ids.new_txnid(cid)
            await store.start_payment(
                cid, txnid, "payu", int(raw["version"]), int(raw["total_amount"]), ""
            )
            await store.settle(txnid, "success", "payu", amount=int(raw["total_amount"]))

    await asyncio.gather(*(one(i) for i in range(n)))


def _one_row_upsert(table: str, columns: tuple[str, ...], key: str) -> str:
    values = ", ".join(
        f"'epoch'::timestamptz + ${i}::int8 * interval '1 millisecond'"
        if c in ("created_at", "updated_at", "expires_at")
        else f"${i}::jsonb"
        if c == "items"
        else f"${i}"
        for i, c in enumerate(columns, 1)
    )
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "  # noqa: S608
    if table == "bookings":
        return sql + f"ON CONFLICT ({key}) DO NOTHING"
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return sql + f"ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {table}.rev < EXCLUDED.rev"


async def write_executemany(conn: asyncpg.Connection, rows: Rows) -> None:
    for (table, columns, key), data in zip(
        TABLES, (rows.carts, rows.payments, rows.bookings), strict=True
    ):
        if data:
            await conn.executemany(_one_row_upsert(table, columns, key), list(data.values()))


async def write_copy(conn: asyncpg.Connection, rows: Rows) -> None:
    await write_rows(conn, rows, how="copy")


async def write_unnest(conn: asyncpg.Connection, rows: Rows) -> None:
    await write_rows(conn, rows, how="unnest")


async def write_json(conn: asyncpg.Connection, rows: Rows) -> None:
    await write_rows(conn, rows, how="json")


async def write_gateway(conn: asyncpg.Connection, rows: Rows) -> None:
    await write_rows(conn, rows)  # what the worker does: JSON, or COPY for large batches


METHODS = {
    "executemany": write_executemany,
    "unnest": write_unnest,
    "json": write_json,
    "copy": write_copy,
    "gateway": write_gateway,
}


async def bench_methods(
    dsn: str, events: list[dict[str, str]], repeats: int
) -> list[dict[str, Any]]:
    results = []
    conn = await asyncpg.connect(dsn)
    try:
        for size in SIZES:
            batches = []
            for start in range(0, len(events), size):
                rows = Rows()
                for fields in events[start : start + size]:
                    rows.add(fields)
                batches.append(rows)
            total_rows = sum(len(b) for b in batches)
            for name, method in METHODS.items():
                rates = []
                for _ in range(repeats):
                    await conn.execute("TRUNCATE carts, payments, bookings")
                    t0 = time.perf_counter()
                    for rows in batches:
                        async with conn.transaction():
                            await method(conn, rows)
                    rates.append(total_rows / (time.perf_counter() - t0))
                results.append(
                    {
                        "batch_events": size,
                        "method": name,
                        "rows_per_s": round(statistics.median(rates)),
                        "rows": total_rows,
                    }
                )
                print(
                    f"  methods: batch {size:>5} events  {name:<12} "
                    f"{statistics.median(rates):>9,.0f} rows/s",
                    file=sys.stderr,
                )
    finally:
        await conn.close()
    return results


async def bench_drain(
    store: RedisStore, partitions: int, admin: str, total_events: int
) -> list[dict[str, Any]]:
    results = []
    streams = [store.keys.stream(p) for p in range(partitions)]
    for size in SIZES:
        name = f"gwbench_{secrets.token_hex(4)}"
        await create_db(admin, name)
        dsn = db_url(admin, name)
        try:
            await migrate(dsn)
            for s in streams:  # every run reads the whole streams from the start
                if await store.client.exists(s):
                    await store.client.xgroup_destroy(s, GROUP)  # 0 when there is no group
            async with await PgStore.open(dsn) as pg:
                worker = WriteBehind(
                    store.client,
                    store.keys,
                    partitions,
                    pg,
                    "bench",
                    WriteBehindConfig(batch_size=size, max_wait_ms=100, trim_interval_s=0),
                    calls=store.calls,  # the pipelined connection, as the gateway's worker has
                )
                stop = asyncio.Event()
                c0, t0 = cpu(), time.perf_counter()
                task = asyncio.create_task(worker.run(stop))
                while worker.written < total_events:
                    await asyncio.sleep(0.01)
                elapsed, used = time.perf_counter() - t0, cpu() - c0
                stop.set()
                await task
            rate = total_events / elapsed
            results.append(
                {
                    "batch_size": size,
                    "events": total_events,
                    "events_per_s": round(rate),
                    "cpu_ms_per_1000_events": round(used / total_events * 1e6, 1),
                }
            )
            print(
                f"  drain: batch {size:>5}  {rate:>9,.0f} events/s  "
                f"{used / total_events * 1e6:.1f} ms CPU per 1000 events",
                file=sys.stderr,
            )
        finally:
            await drop_db(admin, name)
    return results


async def create_db(admin: str, name: str) -> None:
    """A new, empty database (the benchmarks each make their own)."""
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_db(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"gwbench-{secrets.token_hex(4)}"
    partitions = 16
    admin = postgres_admin_url()
    store = await RedisStore.connect(redis_url(), prefix, cart_ttl_s=3600, payment_window_s=86400)
    try:
        print(f"making {args.checkouts} checkouts with the Lua scripts", file=sys.stderr)
        t0 = time.perf_counter()
        await make_checkouts(store, args.checkouts, partitions)
        made = time.perf_counter() - t0
        stats = await queue_stats(store.client, store.keys, partitions)
        events: list[dict[str, str]] = []
        for p in range(partitions):
            events += [f for _, f in await store.client.xrange(store.keys.stream(p))]
        print(f"  {len(events)} events ({stats.backlog} queued) in {made:.1f} s", file=sys.stderr)
        methods: list[dict[str, Any]] = []
        drain: list[dict[str, Any]] = []
        if args.skip != "methods":
            name = f"gwbench_{secrets.token_hex(4)}"
            await create_db(admin, name)
            try:
                await migrate(db_url(admin, name))
                methods = await bench_methods(db_url(admin, name), events, args.repeats)
            finally:
                await drop_db(admin, name)
        if args.skip != "drain":
            drain = await bench_drain(store, partitions, admin, len(events))
        return {
            "checkouts": args.checkouts,
            "events": len(events),
            "methods": methods,
            "drain": drain,
        }
    finally:
        async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
            await store.client.delete(key)
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkouts", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--sizes", default="100,500,2000", help="batch sizes (events)")
    parser.add_argument("--skip", choices=["methods", "drain"], help="skip one part")
    ns = parser.parse_args()
    SIZES[:] = [int(x) for x in ns.sizes.split(",")]
    result = uvloop.run(main(ns))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if ns.json:
        with open(ns.json, "w") as fh:
            fh.write(text + "\n")
