"""The request path's Redis connection: one pipelined RESP connection per process, on hiredis.

redis-py's asyncio client spends about 100-145 µs of CPU on each call (pool, retry wrapper,
observability hooks, stream reader, response callbacks): a quarter of a whole return. Here
every call of one event-loop tick goes out in one write on one connection, and the replies,
which Redis sends in order, resolve the callers' futures in order: about 8 µs a call under
load (decision 26 in docs/decisions.md has the figures). Everything off the request path
(write-behind, monitor, readiness, tests) keeps redis-py.

Replies are hiredis's: strings (UTF-8), integers, lists, ``None``. A Redis error reply
raises ``redis.exceptions.ResponseError`` (``NoScriptError`` for NOSCRIPT); a lost
connection or an answer later than ``timeout`` raises redis-py's ``ConnectionError`` or
``TimeoutError``, fails every call in flight on that connection (their replies can no longer
be matched) and the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("gateway.store")
Arg = str | bytes | int | float


class Calls(Protocol):
    """What the store needs: send one command, get its raw reply. Never a blocking command
    (BLPOP, XREAD BLOCK): on a pipelined connection it would hold up every call behind it."""

    async def call(self, *args: Arg) -> Any: ...

    async def close(self) -> None: ...


def _error(reply: hiredis.ReplyError) -> ResponseError:
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class _Wire(asyncio.Protocol):
    """One connection: FIFO of futures, one write per tick, replies matched in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        future: asyncio.Future[Any] = self.loop.create_future()
        self.waiting.append((future, time.monotonic()))
        self.out.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self.timeout, self._check)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.out and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self._fail(RedisConnectionError("a reply from Redis that nothing asked for"))
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller was cancelled; the reply still had to be read
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def _check(self) -> None:
        """Abort the connection when its oldest call has waited longer than the timeout."""
        self._watchdog = None
        if not self.waiting or self.lost is not None:
            return
        age = time.monotonic() - self.waiting[0][1]
        if age >= self.timeout:
            self._fail(RedisTimeoutError(f"Redis did not answer within {self.timeout} s"))
        else:
            self._watchdog = self.loop.call_later(self.timeout - age, self._check)

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"the connection to Redis was lost: {exc or 'closed'}"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


class RespClient:
    """A pipelined connection to one Redis server (``redis://`` or ``unix://`` URLs)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._wire: _Wire | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: float) -> RespClient | None:
        """A client for ``url``, or ``None`` when it asks for what this client does not do
        (TLS, query options other than ``db``): the store then uses redis-py for it."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            return None
        if any(k != "db" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
            return None
        kw = parse_url(url)
        cls_ = kw.pop("connection_class", Connection)
        if cls_ not in (Connection, UnixDomainSocketConnection):
            return None
        return cls(
            host=kw.get("host") or "127.0.0.1",
            port=int(kw.get("port") or 6379),
            path=kw.get("path"),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            **options,
        )

    async def call(self, *args: Arg) -> Any:
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connect()
        return await wire.send(args)

    async def _connect(self) -> _Wire:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect, however many callers are waiting
            current = self._wire
            if current is not None and current.lost is None:
                return current
            loop = asyncio.get_running_loop()
            wire: _Wire
            try:
                if self.path:
                    connecting = loop.create_unix_connection(lambda: _Wire(self.timeout), self.path)
                else:
                    connecting = loop.create_connection(
                        lambda: _Wire(self.timeout), self.host, self.port
                    )
                _, wire = await asyncio.wait_for(connecting, self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"could not connect to Redis: {exc}") from exc
            hello: list[asyncio.Future[Any]] = []
            if self.password:
                auth: tuple[str, ...] = (
                    (self.username, self.password) if self.username else (self.password,)
                )
                hello.append(wire.send(("AUTH", *auth)))
            if self.db:
                hello.append(wire.send(("SELECT", self.db)))
            try:
                await asyncio.gather(*hello)
            except ResponseError:
                wire._fail(RedisConnectionError("Redis refused AUTH or SELECT"))
                raise
            self._wire = wire
            return wire

    async def close(self) -> None:
        self._closed = True
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.close()
        self._wire = None


async def evalsha(calls: Calls, sha: str, text: str, keys: list[str], args: list[Arg]) -> Any:
    """EVALSHA, loading the script first when Redis lost it (a restart, SCRIPT FLUSH)."""
    try:
        return await calls.call("EVALSHA", sha, len(keys), *keys, *args)
    except NoScriptError:
        log.warning("redis had lost a script; loading it again", extra={"sha": sha})
        await calls.call("SCRIPT", "LOAD", text)
        return await calls.call("EVALSHA", sha, len(keys), *keys, *args)


class RedisPyCalls:
    """The same interface on redis-py's pool, for URLs ``RespClient`` does not take."""

    def __init__(self, client: Redis) -> None:
        self.pool = client.connection_pool

    async def call(self, *args: Arg) -> Any:
        conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(*args)
            return await conn.read_response()
        except ResponseError:
            raise  # an error reply: the connection is in step and stays usable
        except BaseException:
            await conn.disconnect()  # its reply may still come: never reuse it
            raise
        finally:
            await self.pool.release(conn)

    async def close(self) -> None:
        pass  # the pool belongs to the redis-py client
