"""Write-behind: a consumer group that writes the partition streams to PostgreSQL.

One loop per worker: read a batch (up to ``batch_size`` entries, waiting at most
``max_wait_ms`` for it to fill once the first entry arrived), write it in ONE transaction,
then XACK. PostgreSQL unreachable: the batch is retried with bounded exponential backoff,
forever. An entry PostgreSQL refuses (a constraint, bad data) is isolated in a savepoint so
the rest of its batch is written; once delivered ``max_deliveries`` times it moves to the
partition's dead-letter stream, counted, never dropped. Entries of dead consumers are claimed
after ``claim_idle_ms``. Streams are trimmed only below their oldest unacknowledged entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from store.events import BadEvent, Rows
from store.keys import Keys
from store.pg_store import PgStore, describe, migrate, public_error, write_rows
from store.queue import GROUP, report_failure, report_recovery, trim
from store.resp import Calls, RedisPyCalls, evalsha
from store.scripts import source

log = logging.getLogger("gateway.writebehind")
# SQLSTATE classes that say "this row can never be written": data exceptions and integrity
# violations. Anything else (connection, resources, undefined table, deadlock) is retried.
POISON_CLASSES = ("22", "23")

Entry = tuple[str, str, dict[str, str] | None]  # stream, id, fields (None once trimmed)
READ_CHUNK = 128  # entries a single XREADGROUP may return
YIELD_EVERY = 64  # events parsed between two yields to the event loop


@dataclass(frozen=True)
class WriteBehindConfig:
    batch_size: int = 500
    max_wait_ms: int = 250  # decision 33
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    retention_s: int = 7 * 86400
    failed_retention_s: int = 8 * 86400
    trim_interval_s: float = 10.0
    backoff_max_s: float = 5.0


class Hooks:
    """What the worker reports (metrics); the default reports nothing."""

    def batch(self, size: int, seconds: float) -> None: ...
    def retry(self, reason: str) -> None: ...
    def dead_letter(self, count: int) -> None: ...


def is_poison(exc: BaseException) -> bool:
    code = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and code[:2] in POISON_CLASSES


class WriteBehind:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        partitions: int,
        pg: PgStore,
        consumer: str,
        config: WriteBehindConfig | None = None,
        hooks: Hooks | None = None,
        calls: Calls | None = None,
    ) -> None:
        self.redis = redis  # redis-py: the blocking reads, claims, dead letters
        # the draining reads, XACK and retention (non-blocking, many per batch): the
        # process's pipelined connection when given (store/resp.py), so a batch's calls
        # share round trips
        self.calls: Calls = calls or RedisPyCalls(redis)
        self.keys = keys
        self.streams = [keys.stream(p) for p in range(partitions)]
        self.pg = pg
        self.consumer = consumer
        self.config = config or WriteBehindConfig()
        self.hooks = hooks or Hooks()
        self._last_claim = 0.0
        self._last_trim = time.monotonic()
        self._retry_pending = True  # on start, drain our own pending entries first
        self._backlog = False  # the last read filled some stream's share
        self.written = 0
        self._failing_since_ms: int | None = None  # PostgreSQL failing us since (epoch ms)
        self._reported = 0.0  # when that was last said in Redis (monotonic)
        self.retain_text = source("retain")
        # the name EVALSHA knows it by (a digest, not a secret)
        self.retain_sha = hashlib.sha1(self.retain_text.encode(), usedforsecurity=False).hexdigest()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batch in hand is finished before returning."""
        with contextlib.suppress(RedisError):
            await report_recovery(self.redis, self.keys, self.consumer)  # a previous life's
        await self._until_ok(stop, "migrate", lambda: migrate(self.pg.dsn), postgres=True)
        await self._until_ok(stop, "groups", self.ensure_groups)
        log.info(
            "write-behind started", extra={"consumer": self.consumer, "streams": len(self.streams)}
        )
        while not stop.is_set():
            try:
                entries = await self._next_batch(stop)
                if entries:
                    await self.flush(entries, stop)
                await self._housekeeping()
            except RedisError as exc:
                self.hooks.retry("redis")
                log.warning(
                    "write-behind: redis error, retrying", extra={"error": type(exc).__name__}
                )
                await _sleep(stop, 1.0)
            except Exception:
                # A bug must not stop the write-behind for good: log it loudly, count it,
                # and go on; the entries in hand stay pending and are read again.
                self.hooks.retry("unexpected")
                log.exception("write-behind: unexpected error, retrying")
                self._retry_pending = True
                await _sleep(stop, 1.0)
        log.info("write-behind stopped", extra={"consumer": self.consumer, "written": self.written})

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _next_batch(self, stop: asyncio.Event) -> list[Entry]:
        cfg = self.config
        if self._retry_pending:
            # Our own unacknowledged entries: after a restart, or ones that failed to write.
            self._retry_pending = False
            own = await self._read("0", cfg.batch_size, None)
            if own:
                self._retry_pending = True
                return own
        entries = await self._read(">", cfg.batch_size, cfg.block_ms)
        if not entries:
            return []
        if not self._backlog and cfg.max_wait_ms > 0:
            # Caught up: let the batch fill by sleeping through the window. A blocking read
            # per arrival instead cost one XREADGROUP over every stream per one or two
            # events (decision 25).
            await _sleep(stop, cfg.max_wait_ms / 1000)
        while len(entries) < cfg.batch_size:
            more = await self._read(">", cfg.batch_size - len(entries), None)
            if not more:
                break
            entries.extend(more)
        return entries

    async def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        # COUNT applies to each stream: ask each for its share of a small chunk, so one read
        # returns at most ~READ_CHUNK entries and never stalls the event loop (shared with
        # the HTTP path) on parsing thousands of them
        want = min(count, READ_CHUNK)
        per_stream = max(1, -(-want // len(self.streams)))
        out: list[Entry] = []
        self._backlog = False
        if block_ms is not None:
            # a blocking read waits on a connection of its own (redis-py's pool): on the
            # pipelined one it would hold up every call queued behind it
            res: Any = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                dict.fromkeys(self.streams, start),
                count=per_stream,
                block=block_ms,
            )
            for stream, messages in res or []:
                # a stream that filled its share may hold more: no reason to wait for it
                self._backlog = self._backlog or len(messages) >= per_stream
                for msg_id, fields in messages:
                    out.append((str(stream), str(msg_id), fields or None))
            return out
        # The draining reads go on the pipelined connection, as the raw reply (RESP2: per
        # stream, [id, [field, value, ...] or nil]); redis-py's reply parsing was a tenth
        # of the worker's CPU.
        raw: Any = await self.calls.call(
            *("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", per_stream, "STREAMS"),
            *self.streams,
            *[start] * len(self.streams),
        )
        for stream, messages in raw or []:
            self._backlog = self._backlog or len(messages) >= per_stream
            for msg_id, flat in messages:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
                out.append((stream, msg_id, fields))
        return out

    async def flush(self, entries: list[Entry], stop: asyncio.Event | None = None) -> None:
        """Write ``entries`` to PostgreSQL and acknowledge them; retried until it holds."""
        started = time.perf_counter()
        rows = Rows()
        forced = Rows()  # repair events from `gateway reconcile --repair`: rewrite an equal rev
        readable: list[Entry] = []
        unreadable: list[tuple[Entry, str]] = []
        gone: list[Entry] = []
        for n, entry in enumerate(entries, 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let requests in between: the loop is shared
            if entry[2] is None:
                gone.append(entry)  # trimmed while pending: nothing left to write
                continue
            try:
                (forced if entry[2].get("repair") == "1" else rows).add(entry[2])
                readable.append(entry)
            except BadEvent as exc:
                unreadable.append((entry, str(exc)))
        written, refused = await self._write(rows, forced, readable, stop)
        if written or refused:
            await self._recovered()
        await self._ack(written + gone)
        for entry, error in unreadable:
            await self._dead_letter(entry, error, attempts=0)
        for entry, error in refused:
            await self._refused(entry, error)
        if written:
            whole = len(written) == len(readable) and not forced
            await self._retain(rows if whole else None, written)
        self.written += len(written)
        self.hooks.batch(len(entries), time.perf_counter() - started)

    async def _write(
        self, rows: Rows, forced: Rows, entries: list[Entry], stop: asyncio.Event | None
    ) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        if not entries:
            return [], []
        delay = 0.1
        isolate = False
        while True:
            try:
                if isolate:
                    return await self._write_isolated(entries)
                started = time.perf_counter()
                async with self.pg.pool.acquire() as conn, conn.transaction():
                    await write_rows(conn, rows)
                    await write_rows(conn, forced, force=True)
                self.pg.observe("write_batch", time.perf_counter() - started)
                return entries, []
            except Exception as exc:
                if is_poison(exc) and not isolate:
                    isolate = True
                    continue
                if not _retryable(exc):
                    raise
                self.hooks.retry("postgres")
                log.warning(
                    "write-behind: postgres unavailable, retrying",
                    extra={"error": type(exc).__name__, "delay_s": delay, "entries": len(entries)},
                )
                await self._failing(exc)
                if stop is not None and stop.is_set() and delay >= self.config.backoff_max_s:
                    # shutting down with PostgreSQL gone: leave the entries pending; the next
                    # worker (or this one, restarted) drains them
                    return [], []
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)

    async def _write_isolated(
        self, entries: list[Entry]
    ) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """One savepoint per entry, so one bad event does not hold back its batch."""
        written: list[Entry] = []
        refused: list[tuple[Entry, str]] = []
        async with self.pg.pool.acquire() as conn, conn.transaction():
            for entry in entries:
                fields = entry[2] or {}
                one = Rows()
                one.add(fields)
                try:
                    async with conn.transaction():
                        await write_rows(conn, one, force=fields.get("repair") == "1")
                    written.append(entry)
                except asyncpg.PostgresError as exc:
                    if not is_poison(exc):
                        raise
                    refused.append((entry, f"{exc.sqlstate}: {exc}"[:500]))
        return written, refused

    async def _ack(self, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for stream, msg_id, _ in entries:
            by_stream.setdefault(stream, []).append(msg_id)
        if not by_stream:
            return
        await asyncio.gather(
            *(self.calls.call("XACK", stream, GROUP, *ids) for stream, ids in by_stream.items())
        )

    async def _refused(self, entry: Entry, error: str) -> None:
        stream, msg_id, _ = entry
        info = await self.redis.xpending_range(stream, GROUP, min=msg_id, max=msg_id, count=1)
        attempts = int(info[0]["times_delivered"]) if info else self.config.max_deliveries
        if attempts >= self.config.max_deliveries:
            await self._dead_letter(entry, error, attempts)
        else:
            log.warning(
                "write-behind: event refused, will retry",
                extra={"stream": stream, "id": msg_id, "attempts": attempts, "error": error},
            )
            self._retry_pending = True

    async def _dead_letter(self, entry: Entry, error: str, attempts: int) -> None:
        stream, msg_id, fields = entry
        dead = self.keys.deadletter_of_stream(stream)
        async with self.redis.pipeline(transaction=True) as pipe:
            record: dict[Any, Any] = dict(fields or {})
            pipe.xadd(
                dead,
                {
                    **record,
                    "dl.stream": stream,
                    "dl.id": msg_id,
                    "dl.error": error,
                    "dl.attempts": str(attempts),
                    "dl.at": str(int(time.time() * 1000)),
                },
            )
            pipe.xack(stream, GROUP, msg_id)
            await pipe.execute()
        self.hooks.dead_letter(1)
        log.error(
            "write-behind: event moved to the dead-letter stream",
            extra={
                "stream": stream,
                "id": msg_id,
                "dead_letter": dead,
                "error": error,
                "attempts": attempts,
            },
        )

    async def _retain(self, rows: Rows | None, entries: list[Entry]) -> None:
        """Records PostgreSQL now holds in a final state get a retention TTL in Redis."""
        if rows is None:
            rows = Rows()
            for entry in entries:
                rows.add(entry[2] or {})
        cfg, keys = self.config, self.keys
        by_tag: dict[str, tuple[list[str], list[int]]] = {}

        def add(key: str, ttl: int) -> None:
            tag = key[: key.index("}") + 1]  # one script call per partition (one slot)
            ks, ttls = by_tag.setdefault(tag, ([], []))
            ks.append(key)
            ttls.append(ttl)

        for cart_id, cart in rows.carts.items():
            if cart[3] == "CONVERTED":
                add(keys.cart(cart_id), cfg.retention_s)
        for txnid, pay in rows.payments.items():
            if pay[6] == "SUCCESS":
                add(keys.payment(txnid), cfg.retention_s)
            elif pay[6] == "FAILED":
                # a FAILED payment may still succeed within the payment window
                add(keys.payment(txnid), cfg.failed_retention_s)
        for booking_id in rows.bookings:
            add(keys.booking(booking_id), cfg.retention_s)
        await asyncio.gather(
            *(
                evalsha(self.calls, self.retain_sha, self.retain_text, ks, list(ttls))
                for ks, ttls in by_tag.values()
            )
        )

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_claim >= self.config.claim_idle_ms / 2000:
            self._last_claim = now
            await self.claim_idle()
        if self.config.trim_interval_s and now - self._last_trim >= self.config.trim_interval_s:
            self._last_trim = now
            await trim(self.redis, self.streams)

    async def claim_idle(self) -> int:
        """Take over entries that other (dead) consumers left unacknowledged for too long."""
        claimed = 0
        for stream in self.streams:
            res = await self.redis.xautoclaim(
                stream,
                GROUP,
                self.consumer,
                self.config.claim_idle_ms,
                "0-0",
                count=self.config.batch_size,
                justid=True,
            )
            ids = list(res or [])  # with JUSTID, redis-py returns the claimed ids themselves
            if ids:
                claimed += len(ids)
                log.warning(
                    "write-behind: claimed idle entries",
                    extra={"stream": stream, "count": len(ids)},
                )
        if claimed:
            self._retry_pending = True
        return claimed

    async def _until_ok(
        self, stop: asyncio.Event, what: str, step: Any, postgres: bool = False
    ) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                await step()
                if postgres:
                    await self._recovered()
                return
            except Exception as exc:
                if not _retryable(exc) and not isinstance(exc, RedisError):
                    raise
                self.hooks.retry(what)
                log.warning(
                    "write-behind: start step failed, retrying",
                    extra={
                        "step": what,
                        "error": describe(exc, self.pg.dsn) if postgres else type(exc).__name__,
                        "delay_s": delay,
                    },
                )
                if postgres:
                    await self._failing(exc)
                await _sleep(stop, delay)
                delay = min(delay * 2, self.config.backoff_max_s)

    async def _failing(self, exc: BaseException) -> None:
        """Say in Redis that PostgreSQL fails us, for every process's ``/readyz`` (this worker
        may run in a process of its own): at most once a second, refreshed while it lasts."""
        now = time.monotonic()
        if self._failing_since_ms is None:
            self._failing_since_ms = int(time.time() * 1000)
        elif now - self._reported < 1.0:
            return
        self._reported = now
        error = public_error(exc)  # the log has the whole text (describe)
        with contextlib.suppress(RedisError):  # Redis gone too: nowhere to say it
            await report_failure(
                self.redis, self.keys, self.consumer, error, self._failing_since_ms
            )

    async def _recovered(self) -> None:
        if self._failing_since_ms is None:
            return
        self._failing_since_ms = None
        log.info("write-behind: postgres answers again", extra={"consumer": self.consumer})
        with contextlib.suppress(RedisError):
            await report_recovery(self.redis, self.keys, self.consumer)


def _retryable(exc: BaseException) -> bool:
    """PostgreSQL unreachable, restarting, overloaded or the schema not there yet."""
    if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.InterfaceError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and not is_poison(exc)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
