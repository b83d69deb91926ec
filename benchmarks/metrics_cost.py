"""What measuring costs on the return path: the return endpoint with per-request metrics on
and off (and with the JSON access log), alternating runs, medians.

    python -m benchmarks.metrics_cost [--rounds 3] [--seconds 6]

Each run is ``benchmarks.return_rate`` with one gateway process; the figure that matters is
the gateway's CPU microseconds per return (its write-behind included), steadier on a shared
2-core machine than throughput.
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
    return {"rounds": args.rounds, "summary": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--payments", type=int, default=20000)
    print(orjson.dumps(asyncio.run(main(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())
