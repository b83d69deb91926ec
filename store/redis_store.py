"""Hot state in Redis: carts, payments, bookings. Every state change is one Lua script."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import ConfigError, Conflict, NotFound, Unavailable, ValidationFailed
from store import keys as ids
from store.keys import Keys
from store.resp import Arg, Calls, RedisPyCalls, RespClient, evalsha
from store.scripts import NAMES as SCRIPT_NAMES
from store.scripts import Scripts

log = logging.getLogger("gateway.store")
T = TypeVar("T")

# Limits that keep every amount an exact integer in Lua (doubles, printed with 14 digits).
MAX_ITEMS = 50
MAX_QUANTITY = 1000
MAX_TOTAL = 10**12
# An expired cart is kept this long so that it answers EXPIRED (409) rather than 404.
EXPIRED_KEEP_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    t = time.gmtime(ms / 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


def items_view(text: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(text)
    for item in items:
        item["unit_amount"] = int(item["unit_amount"])
        item["quantity"] = int(item["quantity"])
        item["line_amount"] = item["unit_amount"] * item["quantity"]
    return items


def cart_view(h: dict[str, str], now: int | None = None) -> dict[str, Any]:
    status = h["status"]
    if status in ("ACTIVE", "CHECKOUT") and int(h["expires_at"]) <= (now or now_ms()):
        status = "EXPIRED"
    return {
        "cart_id": h["cart_id"],
        "user_id": h["user_id"],
        "currency": h["currency"],
        "status": status,
        "items": items_view(h["items"]),
        "total_amount": int(h["total_amount"]),
        "version": int(h["version"]),
        "created_at": iso(int(h["created_at"])),
        "updated_at": iso(int(h["updated_at"])),
        "expires_at": None if status == "CONVERTED" else iso(int(h["expires_at"])),
    }


def payment_view(h: dict[str, str]) -> dict[str, Any]:
    return {
        "txnid": h["txnid"],
        "cart_id": h["cart_id"],
        "user_id": h["user_id"],
        "provider": h["provider"],
        "amount": int(h["amount"]),
        "currency": h["currency"],
        "status": h["status"],
        "cart_version": int(h["cart_version"]),
        "provider_order_id": h["provider_ref"] or None,
        "provider_payment_id": h["provider_payment_id"] or None,
        "booking_id": h["booking_id"] or None,
        "refund_required": h["refund_required"] == "1",
        "reason": h["reason"] or None,
        "created_at": iso(int(h["created_at"])),
        "updated_at": iso(int(h["updated_at"])),
    }


def booking_view(h: dict[str, str]) -> dict[str, Any]:
    return {
        "booking_id": h["booking_id"],
        "cart_id": h["cart_id"],
        "txnid": h["txnid"],
        "user_id": h["user_id"],
        "status": h["status"],
        "items": items_view(h["items"]),
        "amount": int(h["amount"]),
        "currency": h["currency"],
        "created_at": iso(int(h["created_at"])),
    }


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(frozen=True)
class Settled:
    """What a provider notice did to a payment (or found already done)."""

    payment: dict[str, str]
    applied: bool

    @property
    def status(self) -> str:
        return self.payment["status"]

    @property
    def booking_id(self) -> str:
        return self.payment["booking_id"]

    @property
    def refund_required(self) -> bool:
        return self.payment["refund_required"] == "1"


def refuses_for_good(exc: RedisError) -> bool:
    """A refusal at connect that no retry changes: credentials, permissions, a database
    the server does not have."""
    if isinstance(exc, AuthenticationError | NoPermissionError):
        return True
    text = str(exc).upper()
    return any(sign in text for sign in ("DB INDEX", "NOAUTH", "WRONGPASS", "NOPERM"))


class RedisStore:
    """Carts, payments and bookings in Redis. Use as ``async with RedisStore.connect(...)``."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        *,
        cart_ttl_s: int,
        payment_window_s: int,
        calls: Calls | None = None,
    ) -> None:
        self.client = client  # redis-py: everything off the request path
        # the request path's calls: one pipelined connection (store/resp.py)
        self.calls: Calls = calls or RedisPyCalls(client)
        self.keys = keys
        self.scripts = Scripts.register(client)
        self.cart_ttl_ms = cart_ttl_s * 1000
        self.window_ms = payment_window_s * 1000
        self._closed = False
        # (call, seconds) of every call on the request path; gateway.metrics wires it up
        self.observe: Callable[[str, float], None] = lambda call, seconds: None

    @classmethod
    async def connect(
        cls,
        url: str,
        prefix: str,
        *,
        cart_ttl_s: int,
        payment_window_s: int,
        attempts: int = 5,
    ) -> RedisStore:
        """Connect, retrying with backoff, and load the scripts. The request path's calls go
        through one pipelined connection, or through redis-py for a URL that connection does
        not take (TLS, query options)."""
        client = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            # no per-command health check (it cost ~1.7 % of a return when redis-py carried
            # the return); no retry either, so that no script runs twice: a pooled connection
            # to a Redis that restarted fails its next command once, and its caller's retry
            # (the write-behind's, the monitor's next tick) goes on a fresh one
            max_connections=256,
        )
        calls = RespClient.from_url(url, timeout=5, connect_timeout=2)
        store = cls(
            client,
            Keys(prefix),
            cart_ttl_s=cart_ttl_s,
            payment_window_s=payment_window_s,
            calls=calls,
        )
        delay = 0.1
        for attempt in range(1, attempts + 1):
            try:
                await client.ping()
                break
            except (AuthenticationError, ResponseError) as exc:
                if not refuses_for_good(exc):  # -BUSY, -MASTERDOWN...: it may pass
                    if attempt == attempts:
                        await store.close()
                        raise Unavailable(
                            f"Redis (GATEWAY_REDIS_URL) kept refusing: {str(exc)[:80]}"
                        ) from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                # it answers, and says no (a password, or SELECT of a database it does not
                # have): trying again changes nothing
                await store.close()
                db = client.connection_pool.connection_kwargs.get("db", 0)
                raise ConfigError(
                    f"GATEWAY_REDIS_URL: Redis refused the connection to database {db}: {exc}"
                ) from None
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt == attempts:
                    await store.close()
                    raise Unavailable(
                        f"Redis (GATEWAY_REDIS_URL) did not answer after {attempts} attempts: "
                        f"{type(exc).__name__}"
                    ) from exc
                log.warning(
                    "redis connect failed, retrying",
                    extra={"attempt": attempt, "delay_s": delay, "error": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        await store.scripts.load(client)
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.calls.close()
            await self.client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def ready(self) -> tuple[bool, bool]:
        """(Redis answers, every script is loaded), in one round trip when all is well.

        A script Redis lacks (it restarted without them, or SCRIPT FLUSH) is loaded here:
        otherwise only a request meeting NOSCRIPT would load it, and a load balancer that
        follows readiness sends no request to a process that is not ready."""
        shas = [getattr(self.scripts, name).sha for name in SCRIPT_NAMES]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.ping()
                pipe.script_exists(*shas)
                pong, exists = await pipe.execute()
        except RedisError:
            return False, False
        missing = tuple(name for name, there in zip(SCRIPT_NAMES, exists, strict=True) if not there)
        if missing:
            log.warning("redis lacks scripts; loading them", extra={"scripts": list(missing)})
            try:
                await self.scripts.load(self.client, missing)
            except RedisError:
                return bool(pong), False
        return bool(pong), True

    async def durability(self) -> str:
        """How the server persists: 'aof-always' is what the gateway wants (decision 10)."""
        try:
            conf = cast(dict[str, str], await self.client.config_get("append*"))
        except RedisError:
            return "unknown"  # CONFIG may be disabled (managed Redis)
        if conf.get("appendonly") != "yes":
            return "none"
        return (
            "aof-always"
            if conf.get("appendfsync") == "always"
            else (f"aof-{conf.get('appendfsync', 'unknown')}")
        )

    # carts

    async def create_cart(self, partitions: int, user_id: str, currency: str) -> dict[str, Any]:
        for _ in range(5):
            cart_id = ids.new_cart_id(partitions)
            res = await self._timed(
                "cart_create",
                self._eval(
                    "cart_create",
                    keys=[self.keys.cart(cart_id), self.keys.stream_of(cart_id)],
                    args=[cart_id, user_id, currency, now_ms(), self.cart_ttl_ms, EXPIRED_KEEP_MS],
                ),
            )
            if res[0] == "ok":
                return cart_view(_pairs(res[1]))
        raise Conflict("could not allocate a cart id")  # 5 collisions of 70 random bits

    async def get_cart(self, cart_id: str) -> dict[str, Any]:
        return cart_view(await self.get_cart_raw(cart_id))

    async def get_cart_raw(self, cart_id: str) -> dict[str, str]:
        h = await self._hgetall(self.keys.cart(cart_id))
        if not h:
            raise NotFound(f"no cart {cart_id}")
        return h

    async def change_items(
        self,
        cart_id: str,
        op: str,
        service_id: str,
        name: str = "",
        unit_amount: int = 0,
        quantity: int = 0,
    ) -> dict[str, Any]:
        now = now_ms()
        res = await self._timed(
            "cart_items",
            self._eval(
                "cart_items",
                keys=[self.keys.cart(cart_id), self.keys.stream_of(cart_id)],
                args=[
                    op,
                    now,
                    self.cart_ttl_ms,
                    EXPIRED_KEEP_MS,
                    service_id,
                    name,
                    unit_amount,
                    quantity,
                    MAX_ITEMS,
                    MAX_QUANTITY,
                    MAX_TOTAL,
                ],
            ),
        )
        match res[0]:
            case "ok":
                return cart_view(_pairs(res[1]), now)
            case "notfound":
                raise NotFound(f"no cart {cart_id}")
            case "noitem":
                raise NotFound(f"service {service_id} is not in cart {cart_id}")
            case "conflict":
                raise Conflict(res[1], reason="cart_state")
            case "limit":
                raise ValidationFailed(res[1], reason="cart_limit")
        raise RuntimeError(f"cart_items returned {res[0]!r}")

    # payments

    async def start_payment(
        self,
        cart_id: str,
        txnid: str,
        provider: str,
        version: int,
        amount: int,
        provider_ref: str,
    ) -> dict[str, str]:
        res = await self._timed(
            "payment_start",
            self._eval(
                "payment_start",
                keys=[
                    self.keys.cart(cart_id),
                    self.keys.payment(txnid),
                    self.keys.stream_of(cart_id),
                ],
                args=[
                    txnid,
                    provider,
                    version,
                    amount,
                    now_ms(),
                    self.window_ms,
                    EXPIRED_KEEP_MS,
                    provider_ref,
                ],
            ),
        )
        match res[0]:
            case "ok":
                return _pairs(res[1])
            case "notfound":
                raise NotFound(f"no cart {cart_id}")
            case "conflict":
                raise Conflict(res[1], reason="cart_state")
            case "stale":
                raise Conflict(
                    "the cart changed while the payment was being started; try again",
                    reason="cart_changed",
                )
            case "exists":
                raise Conflict(f"payment {txnid} exists", reason="txnid_taken")
        raise RuntimeError(f"payment_start returned {res[0]!r}")

    async def get_payment(self, txnid: str) -> dict[str, str] | None:
        h = await self._hgetall(self.keys.payment(txnid))
        return h or None

    async def payment_exists(self, txnid: str) -> bool:
        key = self.keys.payment(txnid)
        return bool(await self._timed("exists", self.calls.call("EXISTS", key)))

    async def get_booking(self, booking_id: str) -> dict[str, str] | None:
        h = await self._hgetall(self.keys.booking(booking_id))
        return h or None

    async def settle(
        self,
        txnid: str,
        outcome: str,
        provider: str,
        *,
        amount: int | None = None,
        currency: str | None = None,
        order_ref: str = "",
        provider_payment_id: str = "",
        reason: str = "",
    ) -> Settled | str:
        """Apply a verified notice: ``Settled``, or ``"notfound"`` or ``"mismatch:<field>"``."""
        cart_id = ids.cart_id_of_txn(txnid)
        booking_id = ids.booking_id_for(cart_id)
        res = await self._timed(
            "payment_settle",
            self._eval(
                "payment_settle",
                keys=[
                    self.keys.cart(cart_id),
                    self.keys.payment(txnid),
                    self.keys.booking(booking_id),
                    self.keys.stream_of(txnid),
                ],
                args=[
                    outcome,
                    provider,
                    "" if amount is None else amount,
                    currency or "",
                    order_ref,
                    provider_payment_id,
                    reason,
                    now_ms(),
                    booking_id,
                ],
            ),
        )
        if res[0] == "done":
            return Settled(_pairs(res[1]), res[2] == "1")
        if res[0] == "mismatch":
            return f"mismatch:{res[1]}"
        return "notfound"

    async def index_order(self, provider: str, order_id: str, txnid: str, ttl_s: int) -> None:
        key = self.keys.order_index(provider, order_id)
        await self._timed("set", self.calls.call("SET", key, txnid, "EX", ttl_s))

    async def txnid_for_order(self, provider: str, order_id: str) -> str | None:
        key = self.keys.order_index(provider, order_id)
        return cast(str | None, await self._timed("get", self.calls.call("GET", key)))

    async def _hgetall(self, key: str) -> dict[str, str]:
        return _pairs(await self._timed("hgetall", self.calls.call("HGETALL", key)))

    async def _eval(self, name: str, keys: list[str], args: list[Arg]) -> Any:
        script: Any = getattr(self.scripts, name)
        return await evalsha(self.calls, script.sha, script.script, keys, args)

    async def _timed(self, call: str, pending: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await pending
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable("Redis did not answer; try again shortly") from exc
        finally:
            self.observe(call, time.perf_counter() - started)
