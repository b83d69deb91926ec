"""Instructions Redis spends per settle script call, counted by callgrind (decision 36).

    PYTHONPATH=. .venv/bin/python -m benchmarks.redis_instructions [--settles 600]

Starts a redis-server of its own under ``valgrind --tool=callgrind`` (on a free port, in a
temporary folder, nothing kept on disk), opens ``--settles`` PayU payments with the
gateway's scripts, zeroes the counters, settles them one after another with
``payment_settle`` and prints, as JSON, Redis's instructions per settle (its command
handling and network work included) and what the settles did. Unlike ``INFO
commandstats`` on this shared 2-vCPU host, the count does not move with the host's speed,
so it ranks changes to the Lua scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections import Counter
from typing import Any

import orjson

from benchmarks.instructions import callgrind_control, dumped_instructions
from benchmarks.systems import open_payments
from store.redis_store import RedisStore
from tests.services import start_redis


async def count(settles: int, port: int, pid: int, folder: str) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{port}/0"
    store = await RedisStore.connect(url, "gwri", cart_ttl_s=3600, payment_window_s=86400)
    try:
        await open_payments(store, settles + 1)
        txnids = []
        async for key in store.client.scan_iter(match="gwri:*:pay:*", count=1000):
            txnids.append((await store.client.hgetall(key))["txnid"])
        first, *rest = txnids
        await store.settle(first, "success", "payu", provider_payment_id="bench")  # warm
        callgrind_control(pid, "-z")
        outcomes: Counter[str] = Counter()
        for txnid in rest:
            done = await store.settle(txnid, "success", "payu", provider_payment_id="bench")
            outcomes[
                done if isinstance(done, str) else f"{done.status} applied={done.applied}"
            ] += 1
        callgrind_control(pid, "-d")
        return {
            "script": "payment_settle",
            "settles": len(rest),
            "outcomes": dict(outcomes),
            "instructions_per_settle": dumped_instructions(folder) // len(rest),
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settles", type=int, default=600)
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    cg_folder = tempfile.mkdtemp(prefix="gw-callgrind-")
    server, port, folder = start_redis(
        prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_folder}/cg.%p"],
        startup_s=60.0,
    )
    try:
        result = asyncio.run(count(args.settles, port, server.pid, cg_folder))
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cg_folder, ignore_errors=True)


if __name__ == "__main__":
    main()
