"""Fixtures: a gateway on a free port against the real Redis, under a key prefix of its own.

Service URLs come from the environment (TEST_REDIS_URL), defaulting to the local Redis.
Every fixture removes what it made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio
import tornado.testing
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from gateway.app import Server, listen, make_app
from gateway.config import Settings
from gateway.metrics import Metrics
from store.pg_store import PgStore, migrate
from store.queue import queue_stats
from store.redis_store import RedisStore
from store.writebehind import WriteBehindConfig
from tests import payu_sign, services
from tests.razorpay_standin import RazorpayStandIn

REDIS_URL = services.redis_url()
PG_ADMIN_URL = services.postgres_admin_url()
API_KEY = "test-key-0123456789abcdef"
RETURN_SECRET = "return-secret-0123456789"
PAYU_KEY, PAYU_SALT = "payukey1", "payusalt-0123456789"
RZP_KEY_ID, RZP_SECRET, RZP_WEBHOOK_SECRET = "rzp_test_key", "rzp-secret-xyz", "rzp-webhook-s3cret"
SUCCESS_URL = "https://merchant.example/pay/success?src=gw"
FAILURE_URL = "https://merchant.example/pay/failure"


def base_env(prefix: str, **extra: str) -> dict[str, str]:
    env = {
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_API_KEYS": f"other-key-0123456789,{API_KEY}",
        "GATEWAY_RETURN_SECRET": RETURN_SECRET,
        "GATEWAY_SUCCESS_URL": SUCCESS_URL,
        "GATEWAY_FAILURE_URL": FAILURE_URL,
        "GATEWAY_PAYU_KEY": PAYU_KEY,
        "GATEWAY_PAYU_SALT": PAYU_SALT,
        "GATEWAY_RAZORPAY_KEY_ID": RZP_KEY_ID,
        "GATEWAY_RAZORPAY_KEY_SECRET": RZP_SECRET,
        "GATEWAY_RAZORPAY_WEBHOOK_SECRET": RZP_WEBHOOK_SECRET,
        "GATEWAY_PUBLIC_URL": "https://gateway.example",
    }
    env.update(extra)
    return env


class Client:
    """Talks HTTP to the gateway under test; redirects are never followed."""

    def __init__(self, base_url: str, store: RedisStore, settings: Settings) -> None:
        self.base_url = base_url
        self.store = store
        self.redis = store.client
        self.keys = store.keys
        self.settings = settings
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> HTTPResponse:
        hdrs = dict(headers or {})
        if auth:
            hdrs.setdefault("Authorization", f"Bearer {API_KEY}")
        if json is not None:
            body = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        elif form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return await self.http.fetch(
            self.base_url + path,
            method=method,
            body=body,
            headers=hdrs,
            follow_redirects=False,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=30,
        )

    async def json(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        resp = await self.fetch(method, path, **kw)
        assert resp.code == expect, (resp.code, resp.body)
        return orjson.loads(resp.body)

    async def cart_with_items(self, currency: str = "INR", items: int = 2) -> dict[str, Any]:
        cart = await self.json(
            "POST", "/v1/carts", 201, json={"user_id": "user-1", "currency": currency}
        )
        for i in range(items):
            cart = await self.json(
                "POST",
                f"/v1/carts/{cart['cart_id']}/items",
                json={
                    "service_id": f"svc-{i}",
                    "name": f"Service {i}",
                    "unit_amount": 49900 + i * 100,
                    "quantity": i + 1,
                },
            )
        return dict(cart)

    async def start(self, cart_id: str, provider: str = "payu") -> dict[str, Any]:
        return dict(
            await self.json(
                "POST",
                f"/v1/carts/{cart_id}/payments",
                201,
                json={
                    "provider": provider,
                    "customer": {
                        "firstname": "Asha",
                        "email": "asha@example.com",
                        "phone": "+919876543210",
                    },
                },
            )
        )

    async def payu_return(
        self, payment: dict[str, Any], status: str = "success", **overrides: str
    ) -> HTTPResponse:
        form = payu_sign.response_form(
            payment["redirect"]["fields"], status, PAYU_SALT, **overrides
        )
        return await self.fetch("POST", "/v1/payments/payu/return", form=form, auth=False)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when it has none)."""
        text = (await self.fetch("GET", "/metrics", auth=False)).body.decode()
        wanted = (name, frozenset(labels.items()))
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (s.name, frozenset(s.labels.items())) == wanted:
                    return float(s.value)
        return 0.0

    async def events(self) -> list[dict[str, Any]]:
        """Every event on every partition stream, decoded."""
        out = []
        for part in range(self.settings.partitions):
            for _id, fields in await self.redis.xrange(self.keys.stream(part)):
                out.append(
                    {
                        k: (orjson.loads(v) if k in ("cart", "payment", "booking") else v)
                        for k, v in fields.items()
                    }
                )
        return out

    async def close(self) -> None:
        self.http.close()


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """asyncio's event loop for every test, but uvloop's (the gateway's own) for the
    return lane's tests in tests/test_return_lane_uvloop.py."""
    if item.module.__name__.endswith("_uvloop"):
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def prefix() -> str:
    return f"gwtest-{secrets.token_hex(4)}"


@pytest.fixture
async def razorpay_api() -> AsyncIterator[RazorpayStandIn]:
    standin = RazorpayStandIn(RZP_KEY_ID, RZP_SECRET)
    await standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def settings(prefix: str, razorpay_api: RazorpayStandIn) -> Settings:
    env = base_env(prefix, GATEWAY_RAZORPAY_API_URL=razorpay_api.url)
    return Settings.from_env(env)


async def open_gateway(settings: Settings, pg: PgStore | None = None) -> tuple[Client, Server]:
    store = await RedisStore.connect(
        settings.redis_url,
        settings.redis_prefix,
        cart_ttl_s=settings.cart_ttl_s,
        payment_window_s=settings.payment_window_s,
    )
    app = make_app(settings, store, Metrics(), pg=pg)
    sock, port = tornado.testing.bind_unused_port()
    server = await listen(app, [sock], max_body_size=1024 * 1024)
    client = Client(f"http://127.0.0.1:{port}", store, settings)
    client.app = app  # type: ignore[attr-defined]
    return client, server


async def drop_keys(url: str, prefix: str) -> None:
    r = redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()


async def close_gateway(client: Client, server: Server) -> None:
    server.stop()
    await server.close_all_connections()
    await client.close()
    await client.store.close()


@pytest.fixture
async def gw(settings: Settings) -> AsyncIterator[Client]:
    client, server = await open_gateway(settings)
    yield client
    await close_gateway(client, server)
    await drop_keys(settings.redis_url, settings.redis_prefix)


@pytest.fixture(params=["lane", "tornado"])
async def gw_either(request: Any, settings: Settings) -> AsyncIterator[Client]:
    """The gateway on each of the return's two paths: the return lane (the default), then
    Tornado's routing alone (``GATEWAY_RETURN_LANE=false``). A test using it runs twice."""
    lane = dataclasses.replace(settings, return_lane=request.param == "lane")
    client, server = await open_gateway(lane)
    yield client
    await close_gateway(client, server)
    await drop_keys(settings.redis_url, settings.redis_prefix)


@pytest.fixture
async def make_gw(prefix: str, razorpay_api: RazorpayStandIn) -> AsyncIterator[Any]:
    """Factory for a gateway with changed settings: ``await make_gw(cart_ttl_s=1)``."""
    opened: list[tuple[Client, Server]] = []

    async def factory(**changes: Any) -> Client:
        base = Settings.from_env(base_env(prefix, GATEWAY_RAZORPAY_API_URL=razorpay_api.url))
        pair = await open_gateway(dataclasses.replace(base, **changes))
        opened.append(pair)
        return pair[0]

    yield factory
    for client, server in opened:
        server.stop()
        await server.close_all_connections()
        await client.close()
        await client.store.close()
    await drop_keys(REDIS_URL, prefix)


def db_url(admin_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    name = f"gwtest_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield db_url(PG_ADMIN_URL, name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class DurableClient(Client):
    """A gateway with PostgreSQL and an in-process write-behind worker."""

    pg: PgStore
    stop: Any
    worker_task: Any
    metrics: Metrics

    async def drained(self, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                stats = await queue_stats(self.redis, self.keys, self.settings.partitions)
            except redis.exceptions.ConnectionError:  # a pooled connection to a Redis restarted
                stats = None
            if stats is not None and stats.backlog == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"write-behind did not drain: {stats}")
            await asyncio.sleep(0.05)

    async def count(self, sql: str, *args: Any) -> int:
        async with self.pg.pool.acquire() as conn:
            return int(await conn.fetchval(sql, *args))

    async def checkouts(self, n: int, concurrency: int = 50) -> list[str]:
        """``n`` carts taken through to a successful PayU return; their booking ids."""
        sem = asyncio.Semaphore(concurrency)
        booking_ids: list[str] = []

        async def one() -> None:
            async with sem:
                cart = await self.cart_with_items(items=1)
                payment = await self.start(cart["cart_id"])
                resp = await self.payu_return(payment)
                assert resp.code == 303, resp.body
                query = dict(
                    urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["Location"]).query)
                )
                booking_ids.append(query["booking_id"])

        await asyncio.gather(*(one() for _ in range(n)))
        return booking_ids


@pytest.fixture
async def make_durable(
    prefix: str, razorpay_api: RazorpayStandIn, database_url: str
) -> AsyncIterator[Any]:
    """Factory: ``await make_durable(worker=True, **writebehind_config_changes)``."""
    from gateway.background import writebehind

    opened: list[tuple[DurableClient, Server]] = []

    async def factory(
        worker: bool = True, database: str | None = None, redis: str | None = None, **wb: Any
    ) -> DurableClient:
        env = base_env(
            prefix,
            GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
            GATEWAY_DATABASE_URL=database or database_url,
            GATEWAY_REDIS_URL=redis or REDIS_URL,
        )
        base = Settings.from_env(env)
        config = dataclasses.replace(
            WriteBehindConfig(
                max_wait_ms=20,
                block_ms=200,
                trim_interval_s=0,
                claim_idle_ms=2000,
                backoff_max_s=0.5,
            ),
            **wb,
        )
        settings = dataclasses.replace(base, writebehind=config)
        await migrate(settings.database_url)
        pg = await PgStore.open(settings.database_url)
        client, server = await open_gateway(settings, pg)
        client.__class__ = DurableClient
        durable: Any = client
        durable.pg = pg
        durable.metrics = client.app.settings["ctx"].metrics  # type: ignore[attr-defined]
        durable.stop = asyncio.Event()
        durable.worker_task = None
        if worker:
            w = writebehind(
                settings, client.store, pg, durable.metrics, f"test-{secrets.token_hex(3)}"
            )
            durable.worker = w
            durable.worker_task = asyncio.create_task(w.run(durable.stop))
        opened.append((durable, server))
        return durable

    yield factory
    for client, server in opened:
        client.stop.set()
        if client.worker_task is not None:
            await asyncio.wait_for(client.worker_task, 30)
        server.stop()
        await server.close_all_connections()
        await client.close()
        await client.pg.close()
        await client.store.close()
    await drop_keys(REDIS_URL, prefix)


@pytest.fixture
def own_redis() -> Any:
    """A redis-server of this test's own: (process, port); stopped and removed after."""
    started: list[tuple[subprocess.Popen[bytes], str]] = []

    def start(
        *extra: str, port: int | None = None, folder: str | None = None
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Started on ``port`` in ``folder`` when given: the same server again, after a kill,
        from what it kept on disk (``folder`` is the one a first start made:
        ``own_redis.folder(proc)``)."""
        proc, port_, folder_ = services.start_redis(list(extra), port=port, folder=folder)
        started.append((proc, folder_))
        return proc, port_

    start.folder = lambda proc: next(f for p, f in started if p is proc)  # type: ignore[attr-defined]

    yield start
    for proc, folder in started:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


_FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def figures(request: Any) -> Any:
    """``figures(requests=..., lost=...)``: what a fault or attack test counted, printed at
    the end of the run (the figures docs/reliability.md quotes come from there)."""

    def record(**values: Any) -> None:
        _FIGURES.append((request.node.nodeid, values))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("figures of the fault and attack tests")
    for nodeid, values in _FIGURES:
        shown = ", ".join(
            f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in values.items()
        )
        terminalreporter.write_line(f"{nodeid}: {shown}")
