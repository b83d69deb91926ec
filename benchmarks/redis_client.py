"""What one Redis call costs the calling process, by client (decision 26).

    PYTHONPATH=. .venv/bin/python -m benchmarks.redis_client [--calls 20000]

EVALSHA of a trivial script (so Redis's own work is negligible), the same arguments as a
settlement, 1 caller at a time and 16 concurrent callers: the client's CPU time per call
(``time.process_time``) and the wall time per call. Clients: redis-py's ``Script`` (what
the store used before), redis-py's ``evalsha``, redis-py's pipeline batched per event-loop
tick, and the gateway's pipelined connection (``store.resp.RespClient``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvloop
from redis.asyncio import Redis

from store.resp import RespClient
from tests.services import redis_url

SCRIPT = "return {'done', ARGV[1]}"
KEYS = ["{x}:cart", "{x}:pay", "{x}:booking", "{x}:events"]
ARGS = ["success", "payu", "129900", "", "", "m1", "", "1764000000000", "b1"]


class TickBatcher:
    """redis-py's own pipeline, one per event-loop tick: the best redis-py itself offers."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self.scheduled = False

    def call(self, *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((args, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._run()))
        return future

    async def _run(self) -> None:
        self.scheduled = False
        batch, self.pending = self.pending, []
        pipe = self.client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        for (_, future), value in zip(batch, await pipe.execute(), strict=True):
            future.set_result(value)


async def measure(call: Callable[[], Awaitable[Any]], calls: int, callers: int) -> dict[str, Any]:
    each = calls // callers

    async def caller() -> None:
        for _ in range(each):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    n = each * callers
    return {
        "callers": callers,
        "client_cpu_us_per_call": round((time.process_time() - cpu) / n * 1e6, 1),
        "wall_us_per_call": round((time.perf_counter() - wall) / n * 1e6, 1),
    }


async def main(calls: int) -> list[dict[str, Any]]:
    client = Redis.from_url(redis_url(), decode_responses=True, max_connections=256)
    script = client.register_script(SCRIPT)
    sha = await client.script_load(SCRIPT)
    fast = RespClient.from_url(redis_url())
    assert fast is not None
    batcher = TickBatcher(client)
    clients: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis-py Script()": lambda: script(keys=KEYS, args=ARGS),
        "redis-py evalsha": lambda: client.evalsha(sha, len(KEYS), *KEYS, *ARGS),
        "redis-py pipeline per tick": lambda: batcher.call("EVALSHA", sha, len(KEYS), *KEYS, *ARGS),
        "store.resp.RespClient": lambda: fast.call("EVALSHA", sha, len(KEYS), *KEYS, *ARGS),
    }
    out = []
    try:
        for callers in (1, 16):
            for name, call in clients.items():
                row = {"client": name, **await measure(call, calls, callers)}
                print(row, file=sys.stderr)
                out.append(row)
    finally:
        await fast.close()
        await client.aclose()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    result = uvloop.run(main(parser.parse_args().calls))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
