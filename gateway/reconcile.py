"""``gateway reconcile``: compare every cart, payment and booking in Redis with PostgreSQL.

Waits for the write-behind queue to drain, then compares record by record, field by field.
Rows that only PostgreSQL holds (their Redis copy expired) are not differences. With
``--repair``, each missing or differing record is enqueued again as a repair event, which the
write-behind applies even at an equal revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TextIO

import asyncpg
import orjson
from redis.exceptions import RedisError

from gateway.app import open_stores
from gateway.config import Settings
from gateway.errors import Unavailable
from store.events import (
    BOOKING_COLUMNS,
    CART_COLUMNS,
    PAYMENT_COLUMNS,
    booking_row,
    cart_row,
    payment_row,
    snapshot,
)
from store.pg_store import PgStore, describe
from store.queue import queue_stats
from store.redis_store import RedisStore, now_ms

Builder = Callable[[dict[str, Any]], tuple[Any, ...]]
# key kind: (table, entity name in events, row builder, its columns)
KINDS: dict[str, tuple[str, str, Builder, tuple[str, ...]]] = {
    "cart": ("carts", "cart", cart_row, CART_COLUMNS),
    "pay": ("payments", "payment", payment_row, PAYMENT_COLUMNS),
    "booking": ("bookings", "booking", booking_row, BOOKING_COLUMNS),
}


def _row(build: Builder, h: dict[str, str]) -> tuple[Any, ...]:
    row = build(snapshot(h))
    # items compare as data, not as text
    return tuple(orjson.loads(v) if isinstance(v, str) and v[:1] == "[" else v for v in row)


async def reconcile(
    settings: Settings, out: TextIO, *, repair: bool = False, drain_timeout_s: float = 60.0
) -> int:
    """Print the differences; return 0 when there are none, 1 otherwise. ``Unavailable``
    (naming the setting) when Redis or PostgreSQL cannot be read: no comparison then."""
    async with open_stores(settings) as (store, pg):
        try:
            async with pg.pool.acquire() as conn:  # not only once Redis has records to compare
                await conn.fetchval("SELECT 1")
            return await _reconcile(settings, store, pg, out, repair, drain_timeout_s)
        except RedisError as exc:
            raise Unavailable(
                f"Redis (GATEWAY_REDIS_URL) failed: {type(exc).__name__}: {exc}"
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unavailable(
                f"PostgreSQL (GATEWAY_DATABASE_URL) failed: {describe(exc, pg.dsn)}"
            ) from None


async def _reconcile(
    settings: Settings,
    store: RedisStore,
    pg: PgStore,
    out: TextIO,
    repair: bool,
    drain_timeout_s: float,
) -> int:
    deadline = time.monotonic() + drain_timeout_s
    while True:
        stats = await queue_stats(store.client, store.keys, settings.partitions)
        if stats.backlog == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if stats.backlog:
        print(
            f"warning: the write-behind queue still holds {stats.backlog} events after "
            f"{drain_timeout_s:.0f} s; differences below may only be in flight",
            file=out,
        )
    differences = 0
    checked = 0
    for kind, spec in KINDS.items():
        pattern = f"{store.keys.prefix}:{{*}}:{kind}:*"
        batch: list[str] = []
        async for key in store.client.scan_iter(match=pattern, count=1000):
            batch.append(str(key))
            if len(batch) >= 500:
                d, c = await _compare(store, pg, spec, batch, repair, out)
                differences, checked = differences + d, checked + c
                batch = []
        if batch:
            d, c = await _compare(store, pg, spec, batch, repair, out)
            differences, checked = differences + d, checked + c
    verb = "enqueued for repair" if repair else "found"
    print(f"checked {checked} records; {differences} differences {verb}", file=out)
    return 1 if differences else 0


async def _compare(
    store: RedisStore,
    pg: PgStore,
    kind: tuple[str, str, Builder, tuple[str, ...]],
    keys: list[str],
    repair: bool,
    out: TextIO,
) -> tuple[int, int]:
    table, entity, build, columns = kind
    async with store.client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        hashes: list[dict[str, str]] = await pipe.execute()
    records = {key.rsplit(":", 1)[1]: h for key, h in zip(keys, hashes, strict=True) if h}
    rows = await pg.fetch(table, list(records))
    differences = 0
    for record_id, h in records.items():
        mine = _row(build, h)
        theirs = rows.get(record_id)
        if theirs is None:
            problem = "missing in PostgreSQL"
        else:
            other = _row(build, theirs)
            if other == mine:
                continue
            changed = [c for c, a, b in zip(columns, mine, other, strict=True) if a != b]
            problem = f"differs in {', '.join(changed)}"
        differences += 1
        print(f"{table} {record_id}: {problem}", file=out)
        if repair:
            await store.client.xadd(
                store.keys.stream_of(record_id),
                {
                    "type": "repair",
                    "repair": "1",
                    "at": str(now_ms()),
                    entity: orjson.dumps(snapshot(h)).decode(),
                },
            )
    return differences, len(records)
