"""The tasks that run beside the HTTP server: the write-behind worker and the queue monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.metrics import Metrics, WriteBehindMetrics
from store.pg_store import PgStore
from store.queue import QueueStats, queue_stats
from store.redis_store import RedisStore
from store.writebehind import WriteBehind

log = logging.getLogger("gateway.background")


def consumer_name(role: str, slot: int) -> str:
    """Stable per host and slot, so a restarted worker drains its own pending entries first."""
    return f"{socket.gethostname()}-{role}{slot}"


def writebehind(
    settings: Settings, store: RedisStore, pg: PgStore, metrics: Metrics, consumer: str
) -> WriteBehind:
    return WriteBehind(
        store.client,
        store.keys,
        settings.partitions,
        pg,
        consumer,
        settings.writebehind,
        WriteBehindMetrics(metrics),
        store.calls,
    )


async def monitor(
    settings: Settings,
    store: RedisStore,
    metrics: Metrics,
    publish: Callable[[QueueStats], None],
    stop: asyncio.Event,
    interval_s: float | None = None,
) -> None:
    """Read the queue's length, pending count and lag every ``interval_s`` (default:
    ``GATEWAY_QUEUE_MONITOR_S``), off the hot path."""
    interval = settings.queue_monitor_s if interval_s is None else interval_s
    while not stop.is_set():
        try:
            stats = await queue_stats(store.client, store.keys, settings.partitions)
            metrics.queue(stats)
            publish(stats)
        except RedisError as exc:
            log.warning("queue monitor: redis error", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def loop_lag(metrics: Metrics, stop: asyncio.Event, interval_s: float = 0.05) -> None:
    """How late the event loop runs a timer: every stall of the loop (a long callback, a
    garbage collection, the process waiting for a core) delays every request in it."""
    while not stop.is_set():  # a plain sleep: wait_for would make a task 20 times a second
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, time.monotonic() - due))
