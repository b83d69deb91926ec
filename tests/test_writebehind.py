"""Write-behind to PostgreSQL: exact counts, field-for-field equality, replays, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import asyncpg
import orjson

from gateway.reconcile import reconcile
from store.writebehind import GROUP


async def test_burst_lands_exactly(make_durable):
    gw = await make_durable()
    n = 2000
    booking_ids = await gw.checkouts(n)
    assert len(set(booking_ids)) == n
    await gw.drained()
    assert await gw.count("SELECT count(*) FROM bookings") == n
    assert await gw.count("SELECT count(*) FROM carts WHERE status = 'CONVERTED'") == n
    assert await gw.count("SELECT count(*) FROM payments WHERE status = 'SUCCESS'") == n
    assert (
        await gw.count("SELECT count(*) FROM bookings WHERE booking_id = ANY($1)", booking_ids) == n
    )
    # field for field: reconcile compares every record in Redis with its row
    out = io.StringIO()
    assert await reconcile(gw.settings, out, drain_timeout_s=5) == 0, out.getvalue()
    assert f"checked {3 * n} records; 0 differences" in out.getvalue()
    # PostgreSQL holds them: the final records get a retention TTL in Redis
    some = booking_ids[0]
    ttl = await gw.redis.ttl(gw.keys.booking(some))
    assert 0 < ttl <= gw.settings.writebehind.retention_s
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert "gateway_writebehind_batch_size_count" in metrics


async def test_row_equals_redis_record(make_durable):
    gw = await make_durable()
    [booking_id] = await gw.checkouts(1)
    await gw.drained()
    booking = await gw.json("GET", f"/v1/bookings/{booking_id}")
    async with gw.pg.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM bookings WHERE booking_id = $1", booking_id)
        pay = await conn.fetchrow("SELECT * FROM payments WHERE txnid = $1", booking["txnid"])
        cart = await conn.fetchrow("SELECT * FROM carts WHERE cart_id = $1", booking["cart_id"])
    assert row["cart_id"] == booking["cart_id"] and row["amount"] == booking["amount"]
    assert row["status"] == "CONFIRMED" and row["currency"] == "INR"
    items = orjson.loads(row["items"])
    assert [(i["service_id"], i["quantity"]) for i in items] == [
        (i["service_id"], i["quantity"]) for i in booking["items"]
    ]
    assert (
        row["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
        == (booking["created_at"])
    )
    assert pay["status"] == "SUCCESS" and pay["booking_id"] == booking_id
    assert pay["refund_required"] is False and pay["amount"] == booking["amount"]
    assert cart["status"] == "CONVERTED" and cart["txnid"] == booking["txnid"]


async def test_replaying_the_whole_stream_changes_no_row(make_durable):
    gw = await make_durable()
    await gw.checkouts(200)
    cart = await gw.cart_with_items()  # an open cart and a failed payment too
    failed = await gw.start((await gw.cart_with_items())["cart_id"])
    await gw.payu_return(failed, "failure")
    await gw.drained()

    async def table_state():
        async with gw.pg.pool.acquire() as conn:
            return {
                t: sorted(tuple(r) for r in await conn.fetch(f"SELECT xmin::text, * FROM {t}"))
                for t in ("carts", "payments", "bookings")
            }

    before = await table_state()
    assert any(r for r in before["carts"] if cart["cart_id"] in r)
    events = sum([await gw.redis.xlen(gw.keys.stream(p)) for p in range(gw.settings.partitions)])
    written_before = gw.worker.written
    for p in range(gw.settings.partitions):
        await gw.redis.xgroup_setid(gw.keys.stream(p), GROUP, "0")
    deadline = asyncio.get_running_loop().time() + 30
    while gw.worker.written < written_before + events:
        assert asyncio.get_running_loop().time() < deadline, "replay did not finish"
        await asyncio.sleep(0.05)
    await gw.drained()
    assert await table_state() == before  # same rows, same xmin: not even rewritten


async def test_a_poison_event_is_dead_lettered_and_blocks_nothing(make_durable):
    gw = await make_durable(max_deliveries=3)
    cart = await gw.cart_with_items()
    async with gw.pg.pool.acquire() as conn:
        # a booking for this cart under another id: its real booking violates the
        # one-booking-per-cart constraint and can never be written
        await conn.execute(
            "INSERT INTO bookings VALUES ('b00zzzzzzzzzzzzzz', $1, 'tother', 'u', 'CONFIRMED',"
            " '[]', 100, 'INR', now())",
            cart["cart_id"],
        )
    payment = await gw.start(cart["cart_id"])
    others = asyncio.ensure_future(gw.checkouts(30))
    assert (await gw.payu_return(payment)).code == 303
    others_ids = await others
    await gw.drained()
    dead = []
    for p in range(gw.settings.partitions):
        dead += await gw.redis.xrange(gw.keys.deadletter(p))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["type"] == "payment.succeeded" and fields["dl.attempts"] == "3"
    assert fields["dl.error"].startswith("23505")  # unique_violation
    assert orjson.loads(fields["booking"])["cart_id"] == cart["cart_id"]
    # everything else was written, the same batch's events included
    assert (
        await gw.count("SELECT count(*) FROM bookings WHERE booking_id = ANY($1)", others_ids) == 30
    )
    assert (
        await gw.count(
            "SELECT count(*) FROM payments WHERE txnid = $1 AND status = 'INITIATED'",
            payment["txnid"],
        )
        == 1
    )
    metrics = (await gw.fetch("GET", "/metrics")).body.decode()
    assert "gateway_writebehind_dead_letters_total 1.0" in metrics


async def test_reconcile_finds_and_repairs(make_durable):
    gw = await make_durable()
    booking_ids = await gw.checkouts(20)
    await gw.drained()
    async with gw.pg.pool.acquire() as conn:
        await conn.execute("DELETE FROM bookings WHERE booking_id = $1", booking_ids[3])
        await conn.execute(
            "UPDATE payments SET amount = amount + 1 WHERE booking_id = $1", booking_ids[5]
        )
    out = io.StringIO()
    assert await reconcile(gw.settings, out, drain_timeout_s=5) == 1
    text = out.getvalue()
    assert f"bookings {booking_ids[3]}: missing in PostgreSQL" in text
    assert "differs in amount" in text and "2 differences found" in text
    out = io.StringIO()
    assert await reconcile(gw.settings, out, repair=True, drain_timeout_s=5) == 1
    await gw.drained()
    out = io.StringIO()
    assert await reconcile(gw.settings, out, drain_timeout_s=5) == 0, out.getvalue()


async def test_reads_fall_back_to_postgres(make_durable):
    gw = await make_durable()
    [booking_id] = await gw.checkouts(1)
    await gw.drained()
    booking = await gw.json("GET", f"/v1/bookings/{booking_id}")
    payment = await gw.json("GET", f"/v1/payments/{booking['txnid']}")
    await gw.redis.delete(gw.keys.booking(booking_id), gw.keys.payment(booking["txnid"]))
    assert await gw.json("GET", f"/v1/bookings/{booking_id}") == booking
    assert await gw.json("GET", f"/v1/payments/{booking['txnid']}") == payment


async def test_the_http_path_never_waits_for_postgres(make_durable):
    """No worker at all: every return still gets its 303; the events wait in the stream."""
    gw = await make_durable(worker=False)
    await gw.checkouts(50)
    assert await gw.count("SELECT count(*) FROM bookings") == 0
    types = [e["type"] for e in await gw.events()]
    assert types.count("payment.succeeded") == 50


async def test_migrate_is_idempotent(database_url):
    from store.pg_store import SQL_DIR, migrate

    files = sorted(p.name for p in SQL_DIR.glob("*.sql"))
    assert files[:2] == ["001_initial.sql", "002_fillfactor.sql"]
    assert await migrate(database_url) == files
    assert await migrate(database_url) == []
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(files)
    finally:
        await conn.close()


async def test_trim_never_passes_the_oldest_unacknowledged_entry(make_durable):
    from store.queue import trim

    gw = await make_durable(worker=False)
    await gw.checkouts(40)
    streams = [gw.keys.stream(p) for p in range(gw.settings.partitions)]
    lengths = {s: await gw.redis.xlen(s) for s in streams}
    stream = max(lengths, key=lambda s: lengths[s])
    ids = [i for i, _ in await gw.redis.xrange(stream)]
    assert len(ids) >= 12
    await gw.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await gw.redis.xreadgroup(GROUP, "t", {stream: ">"}, count=10)
    await gw.redis.xack(stream, GROUP, *ids[:4], *ids[5:10])  # ids[4] stays pending
    await trim(gw.redis, [stream], approximate=False)
    assert [i for i, _ in await gw.redis.xrange(stream)] == ids[4:]
    await gw.redis.xack(stream, GROUP, ids[4])  # now the oldest unacknowledged is undelivered
    await trim(gw.redis, [stream], approximate=False)
    assert [i for i, _ in await gw.redis.xrange(stream)] == ids[10:]


async def test_large_batches_go_through_copy_and_stay_idempotent(make_durable, monkeypatch):
    from store import pg_store

    copies = []
    original = asyncpg.connection.Connection.copy_records_to_table

    async def spy(self, table, **kw):
        copies.append(table)
        return await original(self, table, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "copy_records_to_table", spy)
    gw = await make_durable(worker=False)
    await gw.checkouts(pg_store.COPY_FROM_ROWS + 50)
    from gateway.background import writebehind

    stop = asyncio.Event()
    worker = writebehind(gw.settings, gw.store, gw.pg, gw.metrics, "bulk")
    worker.config = dataclasses.replace(gw.settings.writebehind, batch_size=10_000, max_wait_ms=500)
    task = asyncio.create_task(worker.run(stop))
    try:
        await gw.drained()
        assert {"stage_carts", "stage_payments", "stage_bookings"} <= set(copies)
        out = io.StringIO()
        assert await reconcile(gw.settings, out, drain_timeout_s=5) == 0, out.getvalue()
        async with gw.pg.pool.acquire() as conn:
            before = sorted(tuple(r) for r in await conn.fetch("SELECT xmin::text, * FROM carts"))
        written = worker.written
        for p in range(gw.settings.partitions):
            await gw.redis.xgroup_setid(gw.keys.stream(p), GROUP, "0")
        deadline = asyncio.get_running_loop().time() + 60
        while worker.written < 2 * written:
            assert asyncio.get_running_loop().time() < deadline, "the replay did not finish"
            await asyncio.sleep(0.05)
        async with gw.pg.pool.acquire() as conn:
            after = sorted(tuple(r) for r in await conn.fetch("SELECT xmin::text, * FROM carts"))
        assert after == before
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_readyz_reports_the_lag_past_its_bound(make_durable):
    from gateway.background import monitor

    gw = await make_durable(worker=False)  # nothing drains: the lag grows
    await gw.checkouts(3)
    ctx = gw.app.settings["ctx"]
    ctx.settings = dataclasses.replace(ctx.settings, ready_max_lag_s=0.2)
    stop = asyncio.Event()

    def publish(stats):
        ctx.queue = stats

    task = asyncio.create_task(monitor(ctx.settings, gw.store, gw.metrics, publish, stop, 0.05))
    try:
        await asyncio.sleep(0.4)
        body = await gw.json("GET", "/readyz", auth=False)
        assert body["status"] == "degraded" and body["checks"]["writebehind_lag"] is False
        assert body["writebehind"]["lag_seconds"] > 0.2 and body["writebehind"]["queue_length"] > 0
        ctx.settings = dataclasses.replace(ctx.settings, ready_fail_on_lag=True)
        r = await gw.fetch("GET", "/readyz", auth=False)
        assert r.code == 503 and orjson.loads(r.body)["status"] == "not ready"
        metrics = (await gw.fetch("GET", "/metrics")).body.decode()
        assert "gateway_writebehind_lag_seconds" in metrics
        # 3 checkouts of 4 events: cart created, item added, payment started, succeeded
        assert "gateway_writebehind_queue_length 12.0" in metrics, metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_two_workers_share_the_group(make_durable):
    from gateway.background import writebehind

    gw = await make_durable()  # one worker in the gateway, a second one here
    stop = asyncio.Event()
    other = writebehind(gw.settings, gw.store, gw.pg, gw.metrics, "second")
    task = asyncio.create_task(other.run(stop))
    try:
        await gw.checkouts(600)
        await gw.drained()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert gw.worker.written > 0 and other.written > 0
    assert await gw.count("SELECT count(*) FROM bookings") == 600
    assert await gw.count("SELECT count(*) FROM payments WHERE status = 'SUCCESS'") == 600


async def test_redis_durability_is_checked(gw):
    from store.redis_store import RedisStore
    from tests.services import start_redis

    assert await gw.store.durability() in ("none", "aof-everysec", "aof-always", "aof-no")
    proc, port, folder = start_redis(["--appendonly", "yes", "--appendfsync", "always"])
    try:
        store = await RedisStore.connect(
            f"redis://127.0.0.1:{port}/0", "gwtest", cart_ttl_s=60, payment_window_s=60
        )
        async with store:
            assert await store.durability() == "aof-always"
            await store.client.config_set("appendfsync", "everysec")
            assert await store.durability() == "aof-everysec"
    finally:
        proc.terminate()
        proc.wait(10)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def test_cli_migrate_and_reconcile(database_url, prefix):
    import os
    import subprocess
    import sys

    from tests.conftest import REDIS_URL, base_env

    env = {
        **os.environ,
        **base_env(prefix, GATEWAY_DATABASE_URL=database_url, GATEWAY_REDIS_URL=REDIS_URL),
    }
    cmd = [sys.executable, "-m", "gateway.cli"]
    first = subprocess.run([*cmd, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "001_initial.sql" in first.stdout
    again = subprocess.run([*cmd, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout
    rec = subprocess.run(
        [*cmd, "reconcile", "--drain-timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rec.returncode == 0 and "0 differences" in rec.stdout


async def test_claiming_a_single_idle_entry(make_durable):
    """A dead consumer left exactly one entry: it is claimed (this once crashed the worker)."""
    from gateway.background import writebehind

    gw = await make_durable(worker=False)
    await gw.checkouts(1)
    streams = [gw.keys.stream(p) for p in range(gw.settings.partitions)]
    lengths = {s: await gw.redis.xlen(s) for s in streams}
    stream = max(lengths, key=lambda s: lengths[s])
    await gw.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await gw.redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=1)
    alive = writebehind(gw.settings, gw.store, gw.pg, gw.metrics, "alive")
    alive.config = dataclasses.replace(alive.config, claim_idle_ms=1)
    await alive.ensure_groups()
    await asyncio.sleep(0.01)
    assert await alive.claim_idle() == 1
    mine = await gw.redis.xpending_range(
        stream, GROUP, min="-", max="+", count=10, consumername="alive"
    )
    assert len(mine) == 1


async def test_a_batch_fills_by_waiting_not_by_a_read_per_event(make_durable):
    """Events trickling in: the worker reads a few times per batch window, then sleeps; it
    used to make one XREADGROUP over every stream per event or two (decision 25)."""
    gw = await make_durable(max_wait_ms=100)
    worker = gw.worker
    reads = batches = 0
    read, flush = worker._read, worker.flush

    async def counted_read(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    async def counted_flush(*args, **kwargs):
        nonlocal batches
        batches += 1
        return await flush(*args, **kwargs)

    worker._read, worker.flush = counted_read, counted_flush
    for _ in range(40):  # one checkout after another: about 5 events each, spread in time
        await gw.checkouts(1)
    await gw.drained()
    events = len(await gw.events())
    assert events >= 150
    assert await gw.count("SELECT count(*) FROM bookings") == 40
    # A few reads per batch window: the blocking one, the draining ones after the sleep,
    # the empty one that ends it, and blocking ones that time out while idle. How many
    # windows 40 checkouts span depends on the host's speed (a slow host took 41 reads for
    # 160 events), so the bound is per window; and a window holds several events, where
    # reading per arrival made batches of one or two.
    assert reads <= 4 * batches + 4, (reads, batches, events)
    assert batches <= events / 3, (batches, events)


async def test_every_way_of_writing_a_batch_makes_the_same_rows(database_url):
    """The JSON document, COPY and unnest paths of ``write_rows`` store the same values,
    awkward text included (quotes, backslashes, non-ASCII, an emoji, JSON-like text), and
    leave equal revisions alone."""
    from store.events import Rows
    from store.pg_store import migrate, write_rows

    await migrate(database_url)
    awkward = ['Deep "clean" \\ 1', "ñandú — 家 🧹", '{"not": "json"}', "tab\there"]
    rows = Rows()
    for i, text in enumerate(awkward):
        cid, txnid, bid = f"c00{i:014d}", f"t00{i:014d}x", f"b00{i:014d}"
        items = [{"service_id": f"s{i}", "name": text, "unit_amount": 100 + i, "quantity": 2}]
        rows.add(
            {
                "type": "payment.succeeded",
                "cart": orjson.dumps(
                    {
                        "cart_id": cid,
                        "user_id": text,
                        "currency": "INR",
                        "status": "CONVERTED",
                        "items": items if i else {},  # Lua's cjson writes [] as {}
                        "total_amount": 200 + 2 * i,
                        "version": 2,
                        "txnid": txnid,
                        "rev": 4,
                        "created_at": 1764600000000 + i,
                        "updated_at": 1764600000123,
                        "expires_at": 1764603600000,
                    }
                ).decode(),
                "payment": orjson.dumps(
                    {
                        "txnid": txnid,
                        "cart_id": cid,
                        "user_id": text,
                        "provider": "payu",
                        "amount": 200 + 2 * i,
                        "currency": "INR",
                        "status": "SUCCESS",
                        "cart_version": 2,
                        "provider_ref": "",
                        "provider_payment_id": text,
                        "booking_id": bid,
                        "refund_required": i % 2,
                        "reason": text if i % 2 else "",
                        "rev": 3,
                        "created_at": 1764600000000,
                        "updated_at": 1764600000999,
                    }
                ).decode(),
                "booking": orjson.dumps(
                    {
                        "booking_id": bid,
                        "cart_id": cid,
                        "txnid": txnid,
                        "user_id": text,
                        "status": "CONFIRMED",
                        "items": items,
                        "amount": 200 + 2 * i,
                        "currency": "INR",
                        "created_at": 1764600000000,
                    }
                ).decode(),
            }
        )
    conn = await asyncpg.connect(database_url)
    try:
        tables = {}
        for how in ("json", "copy", "unnest"):
            await conn.execute("TRUNCATE carts, payments, bookings")
            async with conn.transaction():
                await write_rows(conn, rows, how=how)
            async with conn.transaction():
                await write_rows(conn, rows, how=how)  # a replay: equal revs change nothing
            tables[how] = [
                [tuple(r) for r in await conn.fetch(f"SELECT xmin::text, * FROM {t} ORDER BY 2")]
                for t in ("carts", "payments", "bookings")
            ]
        assert tables["json"][0][0][5] == "[]"  # the empty cart's items: a list
        assert tables["json"][1][1][12] is True and tables["json"][1][1][13] == awkward[1]
        assert [[r[1:] for r in t] for t in tables["json"]] == [
            [r[1:] for r in t] for t in tables["copy"]
        ]
        assert [[r[1:] for r in t] for t in tables["json"]] == [
            [r[1:] for r in t] for t in tables["unnest"]
        ]
        # the replay wrote no new row versions (xmin is one transaction per table)
        assert len({r[0] for t in tables["json"] for r in t}) == 1
    finally:
        await conn.close()
