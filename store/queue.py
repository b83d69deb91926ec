"""The write-behind queue seen from outside: its length, pending count and lag, and the safe
trimming of its streams (never past the oldest unacknowledged entry of any group)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from store.keys import Keys

GROUP = "writebehind"  # the consumer group of the write-behind workers


async def safe_trim_point(redis: Redis, stream: str) -> str | None:
    """The id below which every group has acknowledged everything (None: keep all)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    if not groups:
        return None
    points: list[tuple[int, int]] = []
    for g in groups:
        last = _parse_id(str(g["last-delivered-id"]))
        # the first entry not yet delivered to this group is unacknowledged too
        points.append((last[0], last[1] + 1))
        if int(g["pending"]):
            summary = await redis.xpending(stream, g["name"])
            if summary["min"]:
                points.append(_parse_id(str(summary["min"])))
    low = min(points)
    return f"{low[0]}-{low[1]}"


async def trim(redis: Redis, streams: list[str], approximate: bool = True) -> None:
    """Trim each stream below its safe point (approximately: whole macro nodes only)."""
    for stream in streams:
        point = await safe_trim_point(redis, stream)
        if point is not None:
            await redis.xtrim(stream, minid=point, approximate=approximate)


def _parse_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class QueueStats:
    backlog: int  # entries not yet acknowledged: pending plus not yet delivered
    pending: int  # delivered to a worker, not yet acknowledged
    oldest_age_s: float  # age of the oldest unacknowledged entry (0 when none)
    dead_letters: int  # entries in the dead-letter streams
    # a write-behind worker failing to reach PostgreSQL: its last error, and since when
    # (epoch ms, the earliest of the workers failing now); None when none reports failing
    postgres_error: str | None = None
    postgres_failing_since_ms: int | None = None


# A failing worker refreshes its report at every retry (its backoff is at most 5 s); a
# report older than this is from a worker that died while failing.
HEALTH_FRESH_MS = 60_000


async def report_failure(
    redis: Redis, keys: Keys, consumer: str, error: str, since_ms: int
) -> None:
    """Say that ``consumer`` cannot write to PostgreSQL (``error`` carries no secret)."""
    record = {"error": error, "since": since_ms, "at": int(time.time() * 1000)}
    await redis.hset(keys.writebehind_health(), consumer, orjson.dumps(record).decode())


async def report_recovery(redis: Redis, keys: Keys, consumer: str) -> None:
    await redis.hdel(keys.writebehind_health(), consumer)


def _failures(reports: dict[str, str], now_ms: float) -> tuple[str | None, int | None]:
    """(the latest error, the earliest start) of the fresh reports."""
    fresh = []
    for text in reports.values():
        try:
            record = orjson.loads(text)
            fresh.append((int(record["at"]), int(record["since"]), str(record["error"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not ours to judge: ignored
    fresh = [r for r in fresh if now_ms - r[0] <= HEALTH_FRESH_MS]
    if not fresh:
        return None, None
    return max(fresh)[2], min(r[1] for r in fresh)


async def queue_stats(redis: Redis, keys: Keys, partitions: int) -> QueueStats:
    """The write-behind queue, read from Redis in two pipelined round trips: every
    partition's group, length and dead letters, then where each one's oldest unacknowledged
    entry is (every serving process reads this each second; a round trip per command cost
    it milliseconds of CPU)."""
    backlog = pending = dead = 0
    oldest: tuple[int, int] | None = None
    now_ms = time.time() * 1000
    streams = [keys.stream(part) for part in range(partitions)]
    async with redis.pipeline(transaction=False) as pipe:
        for part, stream in enumerate(streams):
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            pipe.xlen(keys.deadletter(part))
        pipe.hgetall(keys.writebehind_health())
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    reports = replies.pop()
    if isinstance(reports, Exception):
        raise reports
    error, since = _failures(reports, now_ms)
    # what each command of the second round answers: ("first"|"next"|"pending", 0) or
    # ("count", pending), the last counting the entries never delivered
    asked: list[tuple[str, int]] = []
    async with redis.pipeline(transaction=False) as pipe:
        for i, stream in enumerate(streams):
            groups, length, dl = replies[3 * i : 3 * i + 3]
            if isinstance(groups, ResponseError):  # no stream yet
                continue
            for reply in (length, dl):
                if isinstance(reply, Exception):
                    raise reply
            dead += int(dl)
            group = next((g for g in groups if g["name"] == GROUP), None)
            if group is None:
                backlog += int(length)
                pipe.xrange(stream, count=1)
                asked.append(("first", 0))
                continue
            p = int(group["pending"])
            lag = group.get("lag")  # Redis 7+; None when unknown
            pending += p
            last = _parse_id(str(group["last-delivered-id"]))
            after = f"({last[0]}-{last[1]}"
            if lag is not None:
                backlog += p + int(lag)
                pipe.xrange(stream, min=after, count=1)
                asked.append(("next", 0))
            else:  # count what was never delivered (exact up to 10,000 a partition)
                pipe.xrange(stream, min=after, count=10_000)
                asked.append(("count", p))
            if p:
                pipe.xpending(stream, GROUP)
                asked.append(("pending", 0))
        answers: list[Any] = await pipe.execute() if asked else []
    for (kind, p), answer in zip(asked, answers, strict=True):
        candidate: tuple[int, int] | None = None
        if kind == "pending":
            if answer["min"]:  # acknowledged in between: nothing older pending
                candidate = _parse_id(str(answer["min"]))
        else:
            if kind == "count":
                backlog += p + len(answer)
            if answer:
                candidate = _parse_id(str(answer[0][0]))
        if candidate is not None and (oldest is None or candidate < oldest):
            oldest = candidate
    age = max(0.0, (now_ms - oldest[0]) / 1000) if oldest else 0.0
    return QueueStats(backlog, pending, age, dead, error, since)
