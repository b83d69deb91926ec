"""The systems the sweep compares, each started as 2 (``--processes``) processes with their
own SO_REUSEPORT sockets: the gateway (``gateway serve``), bare Tornado, a bare asyncio
protocol, the synchronous PostgreSQL design and the hot-path prototype
(``benchmarks.baselines``). Each prepares its own
payments and counts the bookings it made. The gateway and the prototype talk to Redis the
same way (``SweepRedis``)."""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import asyncpg
import orjson

from benchmarks import openloop
from benchmarks.baselines import reverse_hash
from benchmarks.return_rate import process_tree, serve_args, wait_up
from benchmarks.writebehind import create_db, drop_db
from store import keys as ids
from store.events import CART_COLUMNS, PAYMENT_COLUMNS
from store.pg_store import migrate
from store.queue import queue_stats
from store.redis_store import RedisStore
from tests.conftest import db_url
from tests.services import free_port, redis_url, start_redis

ROOT = Path(__file__).resolve().parent.parent
SALT, KEY = "bench-salt-0123456789", "benchkey"
PARTITIONS = 16  # the gateway's default (GATEWAY_PARTITIONS)
# a payment row's provider_ref, provider_payment_id, booking_id, refund_required, reason, rev
UNPAID = (None, None, None, False, None, 1)


async def create_database(admin: str, name: str, commit_delay_ms: float = 0) -> str:
    """A new database with the gateway's schema (``gateway migrate``); its URL.

    ``commit_delay_ms``: every commit in it first sleeps that long (PostgreSQL's
    ``commit_delay``, with ``commit_siblings = 0`` so that it applies to a lone commit too),
    as commits that wait for a synchronous replica do. It costs no CPU, so the machine's
    load is unchanged; the sweep's ``--commit-delay-ms`` sets it for the gateway's and the
    synchronous design's databases alike."""
    await create_db(admin, name)
    dsn = db_url(admin, name)
    await migrate(dsn)
    if commit_delay_ms:
        conn = await asyncpg.connect(admin)
        try:  # the name is ours (gwbench_<hex>); the value a number
            await conn.execute(
                f"ALTER DATABASE {name} SET commit_delay = {int(commit_delay_ms * 1000)}"
            )
            await conn.execute(f"ALTER DATABASE {name} SET commit_siblings = 0")
        finally:
            await conn.close()
    return dsn


async def count_bookings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM bookings"))
    finally:
        await conn.close()


def payu_form(txnid: str, cart_id: str, amount: str) -> bytes:
    f = {
        "key": KEY,
        "txnid": txnid,
        "amount": amount,
        "productinfo": f"Booking for cart {cart_id}",
        "firstname": "Asha",
        "email": "asha@example.com",
        "udf1": cart_id,
        "udf2": "",
        "udf3": "",
        "udf4": "",
        "udf5": "",
        "status": "success",
        "mihpayid": "m" + txnid[-8:],
    }
    f["hash"] = reverse_hash(f, SALT)
    return urllib.parse.urlencode(f).encode()


class SweepRedis:
    """The Redis the gateway and the prototype use in the sweep. ``unix``: a redis-server of
    the sweep's own, reached over a Unix socket, as a gateway sharing its host with Redis
    should be deployed (decision 31: 5 % less machine CPU per return than loopback TCP);
    ``tcp``: the local Redis the tests use (``TEST_REDIS_URL``, else 127.0.0.1:6379)."""

    def __init__(self, how: str = "unix") -> None:
        self.how = how
        self.proc: subprocess.Popen[bytes] | None = None
        self.folder = self.sock_dir = ""
        self.url = redis_url()

    def start(self) -> str:
        if self.how == "unix" and shutil.which("redis-server"):
            sock = tempfile.mkdtemp(prefix="gwbench-sock-")
            self.proc, _, self.folder = start_redis(
                ["--unixsocket", f"{sock}/redis.sock", "--unixsocketperm", "700"]
            )
            self.sock_dir = sock
            self.url = f"unix://{sock}/redis.sock?db=0"
        else:
            self.how = "tcp"
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            self.proc = None


class System:
    name = ""
    key = ""  # for --only and the report
    command_prefix: tuple[str, ...] = ()  # what runs the server's python (benchmarks.instructions)
    startup_s = 20.0  # how long it may take to accept connections

    async def start(self) -> None: ...
    async def prepare(self, n: int) -> list[bytes]: ...
    async def bookings(self) -> int: ...
    async def stop(self) -> None: ...

    async def quiesce(self) -> None:
        """Wait until the work a run left behind is done."""

    def launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                *argv,
                *(["--port", str(self.port)] if "--port" not in argv else []),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Gateway(System):
    name = key = "gateway"

    def __init__(
        self, processes: int, admin: str, redis: str = "", commit_delay_ms: float = 0
    ) -> None:
        self.processes, self.admin, self.commit_delay_ms = processes, admin, commit_delay_ms
        self.redis = redis or redis_url()
        self.prefix = f"gwbench-{secrets.token_hex(4)}"
        self.db = f"gwbench_{secrets.token_hex(4)}"

    async def start(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="gwbench-")  # here: --only may never start it
        self.dsn = await create_database(self.admin, self.db, self.commit_delay_ms)
        self.store = await RedisStore.connect(
            self.redis, self.prefix, cart_ttl_s=3600, payment_window_s=86400
        )
        port = free_port()
        self.launch(
            serve_args(self.processes, "--port", str(port)),
            {
                "GATEWAY_REDIS_URL": self.redis,
                "GATEWAY_DATABASE_URL": self.dsn,
                "GATEWAY_REDIS_PREFIX": self.prefix,
                "GATEWAY_API_KEYS": "bench-key-0123456789",
                "GATEWAY_RETURN_SECRET": "bench-return-secret-0123",
                "GATEWAY_SUCCESS_URL": "https://merchant.example/ok",
                "GATEWAY_FAILURE_URL": "https://merchant.example/failed",
                "GATEWAY_PAYU_KEY": KEY,
                "GATEWAY_PAYU_SALT": SALT,
                "GATEWAY_DATA_DIR": self.data_dir,
            },
        )
        self.port = port
        await asyncio.to_thread(wait_up, self.port, self.proc, self.startup_s)

    async def prepare(self, n: int) -> list[bytes]:
        bodies = await open_payments(self.store, n)
        await self.drained()
        return [openloop.form_request("127.0.0.1", "/v1/payments/payu/return", b) for b in bodies]

    async def drained(self) -> None:
        while (await queue_stats(self.store.client, self.store.keys, PARTITIONS)).backlog:
            await asyncio.sleep(0.1)

    async def quiesce(self) -> None:
        await self.drained()  # the write-behind has written the run's events

    async def bookings(self) -> int:
        await self.drained()
        return await count_bookings(self.dsn)

    async def stop(self) -> None:
        self.terminate()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        await drop_keys(self.store, self.prefix)
        await drop_db(self.admin, self.db)


async def open_payments(store: RedisStore, n: int) -> list[bytes]:
    """``n`` carts in CHECKOUT with an INITIATED PayU payment each, made by the gateway's
    scripts; the signed success form of each."""
    sem = asyncio.Semaphore(64)
    bodies: list[bytes] = []

    async def one(i: int) -> None:
        async with sem:
            cart = await store.create_cart(PARTITIONS, f"user-{i}", "INR")
            cid = cart["cart_id"]
            await store.change_items(cid, "add", "svc-1", "Deep cleaning", 129900, 1)
            txnid = ids.new_txnid(cid)
            await store.start_payment(cid, txnid, "payu", 2, 129900, "")
            bodies.append(payu_form(txnid, cid, "1299.00"))

    await asyncio.gather(*(one(i) for i in range(n)))
    return bodies


async def drop_keys(store: RedisStore, prefix: str) -> None:
    """Remove the run's keys, a thousand per UNLINK (a sweep leaves hundreds of thousands)."""
    batch: list[str] = []
    async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            await store.client.unlink(*batch)
            batch = []
    if batch:
        await store.client.unlink(*batch)
    await store.close()


class HotPath(System):
    """The issue's prototype: hash check, the gateway's settle script, 303, nothing else."""

    name, key = "hot path (prototype)", "hotpath"

    def __init__(self, processes: int, redis: str = "") -> None:
        self.processes = processes
        self.redis = redis or redis_url()
        self.prefix = f"gwbench-{secrets.token_hex(4)}"

    async def start(self) -> None:
        self.store = await RedisStore.connect(
            self.redis, self.prefix, cart_ttl_s=3600, payment_window_s=86400
        )
        self.launch(
            [
                *("-m", "benchmarks.baselines", "hotpath", "--processes", str(self.processes)),
                *("--redis", self.redis, "--prefix", self.prefix, "--salt", SALT),
            ]
        )
        await asyncio.to_thread(wait_up_any, self.port, self.proc, self.startup_s)

    async def prepare(self, n: int) -> list[bytes]:
        # Nothing reads the events: trim what earlier runs left, as a write-behind would.
        for partition in range(PARTITIONS):
            await self.store.client.delete(self.store.keys.stream(partition))
        bodies = await open_payments(self.store, n)
        return [openloop.form_request("127.0.0.1", "/v1/payments/payu/return", b) for b in bodies]

    async def bookings(self) -> int:
        return -1  # no PostgreSQL

    async def stop(self) -> None:
        self.terminate()
        await drop_keys(self.store, self.prefix)


class Bare(System):
    name, key = "bare Tornado", "bare"
    kind = "bare"  # benchmarks.baselines' server

    def __init__(self, processes: int) -> None:
        self.processes = processes

    async def start(self) -> None:
        self.launch(["-m", "benchmarks.baselines", self.kind, "--processes", str(self.processes)])
        await asyncio.to_thread(wait_up_any, self.port, self.proc, self.startup_s)

    async def prepare(self, n: int) -> list[bytes]:
        return [
            openloop.form_request(
                "127.0.0.1",
                "/v1/payments/payu/return",
                payu_form(f"t{i:022d}", f"c{i:016d}", "1299.00"),
            )
            for i in range(n)
        ]

    async def bookings(self) -> int:
        return -1  # makes none

    async def stop(self) -> None:
        self.terminate()


class BareProtocol(Bare):
    name, key = "bare asyncio protocol", "protocol"
    kind = "protocol"


class Sync(System):
    name, key = "synchronous PostgreSQL", "synchronous"

    def __init__(self, processes: int, admin: str, commit_delay_ms: float = 0) -> None:
        self.processes, self.admin, self.commit_delay_ms = processes, admin, commit_delay_ms
        self.db = f"gwbench_{secrets.token_hex(4)}"
        self.made = 0

    async def start(self) -> None:
        # the gateway's own tables, and the same commits
        self.dsn = await create_database(self.admin, self.db, self.commit_delay_ms)
        self.launch(
            [
                "-m",
                "benchmarks.baselines",
                "sync",
                "--processes",
                str(self.processes),
                "--dsn",
                self.dsn,
                "--salt",
                SALT,
            ]
        )
        await asyncio.to_thread(wait_up_any, self.port, self.proc, self.startup_s)

    async def prepare(self, n: int) -> list[bytes]:
        rows = [(f"c{self.made + i:016d}", f"t{self.made + i:022d}") for i in range(n)]
        self.made += n
        now = datetime.datetime.now(datetime.UTC)
        later = now + datetime.timedelta(days=1)
        items = orjson.dumps(
            [{"service_id": "svc-1", "name": "Deep cleaning", "unit_amount": 129900, "quantity": 1}]
        ).decode()
        conn = await asyncpg.connect(self.dsn)
        try:
            # the state the gateway's scripts leave before the return: cart CHECKOUT at
            # version 2, payment INITIATED for that version
            await conn.copy_records_to_table(
                "carts",
                records=[
                    (c, f"user-{c}", "INR", "CHECKOUT", items, 129900, 2, None, 3, now, now, later)
                    for c, _ in rows
                ],
                columns=CART_COLUMNS,
            )
            await conn.copy_records_to_table(
                "payments",
                records=[
                    (t, c, f"user-{c}", "payu", 129900, "INR", "INITIATED", 2, *UNPAID, now, now)
                    for c, t in rows
                ],
                columns=PAYMENT_COLUMNS,
            )
        finally:
            await conn.close()
        return [
            openloop.form_request(
                "127.0.0.1", "/v1/payments/payu/return", payu_form(t, c, "1299.00")
            )
            for c, t in rows
        ]

    async def bookings(self) -> int:
        return await count_bookings(self.dsn)

    async def stop(self) -> None:
        self.terminate()
        await drop_db(self.admin, self.db)


def wait_up_any(port: int, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    """Wait until the port accepts connections (the baselines have no /healthz)."""
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not come up")


def rss_per_process(pid: int) -> list[float]:
    out = []
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(round(int(line.split()[1]) / 1024, 1))
        except FileNotFoundError:
            continue
    return out
