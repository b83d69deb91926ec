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
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.systems import open_payments
from store.redis_store import RedisStore
from tests.services import free_port


def summary(path: Path) -> int:
    match = re.search(r"^summary: (\d+)", path.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no summary line in {path}")
    return int(match.group(1))


async def count(settles: int, port: int, pid: int, folder: Path) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{port}/0"
    store = await RedisStore.connect(url, "gwri", cart_ttl_s=3600, payment_window_s=86400)
    try:
        await open_payments(store, settles + 1)
        txnids = []
        async for key in store.client.scan_iter(match="gwri:*:pay:*", count=1000):
            txnids.append((await store.client.hgetall(key))["txnid"])
        first, *rest = txnids
        await store.settle(first, "success", "payu", provider_payment_id="bench")  # warm
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        outcomes: Counter[str] = Counter()
        for txnid in rest:
            done = await store.settle(txnid, "success", "payu", provider_payment_id="bench")
            outcomes[
                done if isinstance(done, str) else f"{done.status} applied={done.applied}"
            ] += 1
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dumps = sorted(folder.glob("callgrind.out.*.*"))
        return {
            "script": "payment_settle",
            "settles": len(rest),
            "outcomes": dict(outcomes),
            "instructions_per_settle": summary(dumps[-1]) // len(rest),
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settles", type=int, default=600)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    folder = Path(tempfile.mkdtemp(prefix="gw-redis-cg-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={folder}/callgrind.out.%p",
            "redis-server",
            *("--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("redis-server under valgrind did not start")
            time.sleep(0.5)
        result = asyncio.run(count(args.settles, port, server.pid, folder))
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        server.wait(60)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
