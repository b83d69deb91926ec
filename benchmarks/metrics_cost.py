"""What measuring costs on the return path.

    python -m benchmarks.metrics_cost [--rounds 3] [--seconds 6]

1. Micro: the exact metrics work one return does (its request-duration observation, its
   Redis-call observation), timed alone over 200,000 returns, in prometheus-client's
   single-process mode and in its multiprocess mode (``--workers N``): microseconds per return.
2. End to end: ``benchmarks.return_rate`` with one gateway process and per-request metrics
   on, off, and on with the JSON access log, in alternating rounds: the gateway's CPU
   microseconds per return (its write-behind included), medians and spread. On a shared
   2-core machine this spread is wider than the metrics' cost, which is why (1) exists.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

import orjson

from benchmarks import return_rate

VARIANTS = (("on", "WARNING"), ("off", "WARNING"), ("on", "INFO"))
MICRO = """
import atexit, os, shutil, sys, tempfile, time
if sys.argv[1] == "multiprocess":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder = tempfile.mkdtemp(prefix="gw-prom-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
from gateway.metrics import Metrics
m = Metrics()
# what gateway.app.log_request and the store's timing do for one return
h = m.request_duration
n = 200_000
t0 = time.process_time()
for i in range(n):
    m.child(h, "payment_return", "POST", 303).observe(0.004)
    m.redis_call("payment_settle", 0.0004)
print((time.process_time() - t0) / n * 1e6)
"""


def micro(mode: str) -> float:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", MICRO, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    return round(float(out.stdout), 2)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for metrics, level in VARIANTS:
            name = f"metrics {metrics}, access log {'on' if level == 'INFO' else 'off'}"
            print(f"round {round_ + 1}: {name}", file=sys.stderr)
            ns = argparse.Namespace(
                payments=args.payments,
                seconds=args.seconds,
                connections=16,
                workers=1,
                metrics=metrics,
                log_level=level,
            )
            runs.setdefault(name, []).append(await return_rate.run(ns))
    summary = {
        name: {
            "cpu_us_per_return": statistics.median(r["cpu_us_per_return"] for r in rs),
            "returns_per_s": statistics.median(r["returns_per_s"] for r in rs),
            "p99": [r["p99"] for r in rs],
        }
        for name, rs in runs.items()
    }
    base = summary["metrics off, access log off"]["cpu_us_per_return"]
    for s in summary.values():
        s["cpu_vs_metrics_off"] = round(s["cpu_us_per_return"] / base, 3)
    spread = [r["cpu_us_per_return"] for rs in runs.values() for r in rs]
    micro_us = {mode: micro(mode) for mode in ("single-process", "multiprocess")}
    return {
        "micro_us_per_return": micro_us,
        "micro_share_of_return_cpu": {mode: round(us / base, 4) for mode, us in micro_us.items()},
        "rounds": args.rounds,
        "end_to_end": summary,
        "end_to_end_cpu_us_spread": [min(spread), max(spread)],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--payments", type=int, default=20000)
    print(orjson.dumps(asyncio.run(main(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())
