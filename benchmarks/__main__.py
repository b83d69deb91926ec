"""``python -m benchmarks`` (``make bench``): the open-loop rate sweep of the return
endpoint, the gateway against its baselines and the hot-path prototype, with a report.

    PYTHONPATH=. .venv/bin/python -m benchmarks [--seconds 5] [--repeats 3] [--processes 2]
        [--only gateway,bare,protocol,synchronous,hotpath] [--rates 400,800] [--quick]
        [--label NAME] [--redis unix|tcp] [--commit-delay-ms 2]

The systems (``benchmarks/systems.py``: the gateway, bare Tornado, a bare asyncio protocol,
the synchronous design and the hot-path prototype; the same process count for all) run side
by side and take turns: every rate, ``--repeats`` runs each, with ``benchmarks.openloop``
(latency from each request's intended send time), every request a correctly signed PayU
success for a distinct, pre-created payment; the median-p99 run is the point, a run that the
hypervisor's steal disturbed is run again. A saturated system leaves the sweep. Then it checks
that PostgreSQL holds exactly the bookings each system made, measures the extra figures
(drain rate, CPU per return, memory, metrics cost), and writes ``benchmarks/results/<date>/``
(sweep.json, sweep.csv, latency.png, summary.md) and the sweep section of
docs/benchmarks.md (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from benchmarks import metrics_cost, openloop
from benchmarks.report import TARGET_MS, extras_table, plot, summary_table, update_docs
from benchmarks.return_rate import tree_cpu_s
from benchmarks.systems import (
    ROOT,
    Bare,
    BareProtocol,
    Gateway,
    HotPath,
    SweepRedis,
    Sync,
    System,
    rss_per_process,
)
from store import keys as ids
from store.redis_store import RedisStore
from tests.services import postgres_admin_url, redis_url

# Steps of 100/s up to 600: the synchronous design's knee lies there, and with 200/s steps
# its rate (hence the ratio against it) could only be read to a factor of 2 (200 or 400).
RATES = [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000]
RATES += [2400, 2800, 3200, 3600, 4000, 4500, 5000]
# On a quick host (2026-12-03) the gateway held 6,000/s and both bare baselines the top
# (8,000/s): steps of about 8 % on to where bare Tornado's ceiling lies, so that no ratio is
# read off a baseline the sweep cut off, nor to within a 17 % step
RATES += [5500, 6000, 6500, 7000, 7500, 8000, 9000, 10000, 11000, 12000]
# A run during which the hypervisor took more than this share of the CPU measures the host,
# not the system: it is run again (up to STEAL_ATTEMPTS times; all attempts are reported).
STEAL_LIMIT_PCT, STEAL_ATTEMPTS = 5.0, 3
WARMUP_RATE, WARMUP_S = 200, 2.0  # connections, caches, JIT-free Python's first paths
QUICK_RATES = [20, 40]
DRAIN_ARGS = ("--repeats", "1", "--skip", "methods", "--sizes", "500")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def checkpoint(admin: str) -> None:
    """Each system starts its sweep from a clean PostgreSQL: the one before it leaves dirty
    buffers and WAL that would set off a checkpoint in the middle of its sweep. (Not before
    every point: right after a checkpoint, each first write to a page logs the whole page,
    which would load every point with that cost.)"""
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_pct(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others (steal) in between."""
    d = [y - x for x, y in zip(before, after, strict=True)]
    return round(100 * d[7] / max(1, sum(d)), 1)


async def one_run(system: System, rate: int, seconds: float) -> tuple[dict[str, Any], int]:
    """One open-loop run at ``rate``: its summary, and how many success redirects it got."""
    requests = await system.prepare(int(rate * seconds))
    await asyncio.sleep(0.5)
    before, ticks = tree_cpu_s(system.proc.pid), cpu_ticks()
    result = await openloop.run(
        "127.0.0.1", system.port, requests, rate, seconds, keep_locations=True
    )
    used = tree_cpu_s(system.proc.pid) - before
    s = result.summary()
    s["cpu_us_per_request"] = round(used / max(1, s["completed"]) * 1e6, 1)
    s["status_303"] = result.statuses.get(303, 0)
    s["steal_pct"] = steal_pct(ticks, cpu_ticks())
    await system.quiesce()  # nothing of this run may load the next system's
    return s, sum(1 for loc in result.locations if "status=success" in loc)


async def sweep(
    systems: list[System],
    rates: list[int],
    seconds: float,
    admin: str,
    repeats: int = 3,
    warmup: bool = True,
) -> list[dict[str, Any]]:
    """Every system at every rate, ``repeats`` runs each; the point reported is the run with
    the median p99. Interleaved: within each repeat the systems run back to back, so host
    contention that drifts over minutes (the hypervisor's steal here goes from 1 % to over
    30 %) falls on all of them alike instead of on whichever ran in a bad stretch."""
    for system in systems:
        say(f"{system.name}: starting")
        await system.start()
    points: dict[System, list[dict[str, Any]]] = {s: [] for s in systems}
    disturbed: dict[System, list[dict[str, Any]]] = {s: [] for s in systems}
    successes = dict.fromkeys(systems, 0)
    active = list(systems)
    extra: dict[System, dict[str, Any]] = {s: {} for s in systems}
    made: dict[System, int] = {}
    try:
        if warmup:
            for system in systems:
                say(f"{system.name}: warming up ({WARMUP_RATE}/s for {WARMUP_S:g} s)")
                _, n = await one_run(system, WARMUP_RATE, WARMUP_S)
                successes[system] += n
        await checkpoint(admin)
        for rate in rates:
            if not active:
                break
            runs: dict[System, list[dict[str, Any]]] = {s: [] for s in active}
            for _ in range(repeats):
                for system in active:
                    for attempt in range(1, STEAL_ATTEMPTS + 1):
                        run, n = await one_run(system, rate, seconds)
                        successes[system] += n
                        run["attempt"] = attempt
                        if run["steal_pct"] <= STEAL_LIMIT_PCT:
                            break
                        disturbed[system].append(run)  # kept in the report, not the point
                        say(f"{system.name}: {rate}/s run disturbed ({run['steal_pct']} % steal)")
                    run["disturbed"] = run["steal_pct"] > STEAL_LIMIT_PCT
                    runs[system].append(run)
            for system in list(active):
                point = median_point(runs[system])
                points[system].append(point)
                say(
                    f"{system.name}: {rate}/s -> p50 {point['p50_ms']} ms, p99 "
                    f"{point['p99_ms']} ms (runs {point['runs_p99_ms']}, steal "
                    f"{point['runs_steal_pct']} %), achieved {point['achieved_rate']}/s, "
                    f"{point['errors']} errors"
                )
                if point["p50_ms"] > 5 * TARGET_MS or point["achieved_rate"] < 0.9 * rate:
                    active.remove(system)  # saturated: the median request queues
        for system in systems:
            if isinstance(system, Gateway):
                extra[system]["rss_mb_per_process"] = rss_per_process(system.proc.pid)
            made[system] = await system.bookings()
    finally:
        for system in systems:
            await system.stop()
    return [
        {
            "system": system.name,
            "key": system.key,
            "points": points[system],
            **rates_within(points[system]),
            "disturbed_runs": disturbed[system],
            "success_redirects": successes[system],
            "bookings_in_postgres": made[system],
            **extra[system],
        }
        for system in systems
    ]


def median_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["p99_ms"])
    point = {**ordered[len(ordered) // 2], "runs_p99_ms": [r["p99_ms"] for r in runs]}
    point["runs_steal_pct"] = [r["steal_pct"] for r in runs]
    point["errors"] = sum(r["errors"] for r in runs)
    point["disturbed"] = sum(1 for r in runs if r["disturbed"])  # steal above the limit
    return point


def rates_within(points: list[dict[str, Any]]) -> dict[str, int]:
    held = [p["p99_ms"] <= TARGET_MS and not p["errors"] for p in points]
    sustained = 0
    for p, ok in zip(points, held, strict=True):
        if not ok:
            break
        sustained = p["offered_rate"]
    return {
        "max_rate_within_18ms": max(
            [p["offered_rate"] for p, ok in zip(points, held, strict=True) if ok] or [0]
        ),
        # every point up to this rate held (a noisy machine can fail one and pass the next)
        "sustained_rate_within_18ms": sustained,
    }


async def redis_memory(n: int) -> dict[str, float]:
    """Redis bytes per open cart (2 services) and per completed booking (all it leaves)."""
    prefix = f"gwbench-{secrets.token_hex(4)}"
    store = await RedisStore.connect(redis_url(), prefix, cart_ttl_s=3600, payment_window_s=86400)
    try:

        async def used() -> int:
            return int((await store.client.info("memory"))["used_memory"])

        base = await used()
        carts = []
        for i in range(n):
            cart = await store.create_cart(16, f"user-{i}", "INR")
            await store.change_items(cart["cart_id"], "add", "svc-1", "Deep cleaning", 129900, 1)
            await store.change_items(cart["cart_id"], "add", "svc-2", "Sofa", 39900, 2)
            carts.append(cart["cart_id"])
        open_carts = await used()
        for cid in carts:
            txnid = ids.new_txnid(cid)
            await store.start_payment(cid, txnid, "payu", 3, 209700, "")
            await store.settle(txnid, "success", "payu", amount=209700)
        completed = await used()
        return {
            "bytes_per_open_cart": round((open_carts - base) / n),
            "bytes_per_completed_booking_with_events": round((completed - base) / n),
        }
    finally:
        async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
            await store.client.delete(key)
        await store.close()


async def main(args: argparse.Namespace) -> int:
    rates = QUICK_RATES if args.quick else RATES
    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
    admin = postgres_admin_url()
    sweep_redis = SweepRedis(args.redis)
    url = sweep_redis.start()
    say(f"the gateway's and the prototype's Redis: {sweep_redis.how} ({url})")
    systems: list[System] = [
        Gateway(args.processes, admin, url, args.commit_delay_ms),
        Bare(args.processes),
        BareProtocol(args.processes),
        Sync(args.processes, admin, args.commit_delay_ms),
        HotPath(args.processes, url),
    ]
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        systems = [s for s in systems if s.key in wanted]
    repeats = 1 if args.quick else args.repeats
    try:
        results = await sweep(systems, rates, args.seconds, admin, repeats, not args.quick)
    finally:
        sweep_redis.stop()
    ok = True
    for r in results:
        if r["bookings_in_postgres"] >= 0 and r["bookings_in_postgres"] != r["success_redirects"]:
            say(
                f"MISMATCH {r['system']}: {r['success_redirects']} success redirects, "
                f"{r['bookings_in_postgres']} bookings in PostgreSQL"
            )
            ok = False
        elif r["bookings_in_postgres"] >= 0:
            say(
                f"{r['system']}: PostgreSQL holds exactly the {r['bookings_in_postgres']} "
                "bookings the run made"
            )
    if args.only:  # print, write nothing
        for r in results:
            print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
        return 0 if ok else 1
    say("measuring Redis memory per cart and per booking")
    memory = await redis_memory(200 if args.quick else 5000)
    say("measuring the write-behind's drain rate (benchmarks.writebehind, batch 500, 3 runs)")
    drain = drain_rate(300 if args.quick else 10_000, 1 if args.quick else 3)
    say("measuring the metrics work per return (benchmarks.metrics_cost, micro)")
    metrics_us = {mode: metrics_cost.micro(mode) for mode in ("single-process", "multiprocess")}
    gw_at = next(
        (
            p
            for p in results[0]["points"]
            if p["offered_rate"] == results[0]["max_rate_within_18ms"]
        ),
        results[0]["points"][0],
    )
    extras = {
        "writebehind_drain": drain,
        "metrics_us_per_return": metrics_us,
        "gateway_cpu_us_per_return": gw_at["cpu_us_per_request"],
        "gateway_rss_mb_per_process": results[0].get("rss_mb_per_process", []),
        "redis_memory": memory,
    }
    label = args.label or datetime.date.today().isoformat()
    if args.commit_delay_ms and not args.label:
        label += f"-commit-delay-{args.commit_delay_ms:g}ms"
    out_dir = ROOT / "benchmarks" / "results" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "seconds_per_run": args.seconds,
        "runs_per_point": 1 if args.quick else args.repeats,
        "processes": args.processes,
        "machine": {"cpus": os.cpu_count()},
        "redis": sweep_redis.how,
        "results": results,
        "redis_memory": memory,
        "extras": extras,
        "postgres_matches": ok,
    }
    (out_dir / "sweep.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    with open(out_dir / "sweep.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "system",
                "offered_rate",
                "achieved_rate",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "max_ms",
                "errors",
                "cpu_us_per_request",
            ]
        )
        for r in results:
            for p in r["points"]:
                w.writerow(
                    [
                        r["system"],
                        p["offered_rate"],
                        p["achieved_rate"],
                        p["p50_ms"],
                        p["p90_ms"],
                        p["p99_ms"],
                        p["max_ms"],
                        p["errors"],
                        p["cpu_us_per_request"],
                    ]
                )
    plot(results, out_dir / "latency.png")
    table = summary_table(results) + "\n\n" + extras_table(extras, results)
    (out_dir / "summary.md").write_text(table + "\n")
    say(f"wrote {out_dir}")
    print(table)
    if not args.quick and not args.commit_delay_ms:  # the docs' sweep is the plain one
        update_docs(out_dir, table, args, method_text(args))
    return 0 if ok else 1


def method_text(args: argparse.Namespace) -> str:
    return (
        "Latency is measured from each request's intended send time (`benchmarks/openloop.py`), "
        "on this same 2-core machine with the load generator, Redis and PostgreSQL beside the "
        "servers. The systems run side by side and take turns: each rate runs "
        f"{args.repeats} times for each system, the systems back to back within each round, "
        "and the run with the median p99 is the one reported (every run's p99 and the "
        "hypervisor's steal during it are in sweep.json). A run during which the hypervisor "
        f"took more than {STEAL_LIMIT_PCT:g} % of the CPU is run again, up to "
        f"{STEAL_ATTEMPTS} attempts (the last column counts both). Each system is warmed up "
        f"first ({WARMUP_RATE}/s for {WARMUP_S:g} s, not reported), then one PostgreSQL "
        "CHECKPOINT."
    )


def drain_rate(checkouts: int, runs: int = 3) -> dict[str, Any]:
    """One worker draining ``checkouts`` checkouts' events into PostgreSQL, batch 500: the
    median of ``runs`` runs (one run's rate moved from 7.6k to 12.5k events/s with the host),
    with every run's rate beside it."""
    drains: list[dict[str, Any]] = []
    for _ in range(runs):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.writebehind",
                "--checkouts",
                str(checkouts),
                *DRAIN_ARGS,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        drains.append(orjson.loads(out.stdout)["drain"][0])
    drains.sort(key=lambda d: float(d["events_per_s"]))
    median = dict(drains[len(drains) // 2])
    median["runs_events_per_s"] = [d["events_per_s"] for d in drains]
    return median


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rate (median p99)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--commit-delay-ms",
        type=float,
        default=0,
        help="every PostgreSQL commit of the gateway and the synchronous design waits this "
        "long first, as one waiting for a synchronous replica does (no CPU)",
    )
    parser.add_argument(
        "--redis",
        choices=["unix", "tcp"],
        default="unix",
        help="the gateway's Redis: a redis-server of the sweep's own on a Unix socket "
        "(default), or the local one over TCP",
    )
    parser.add_argument("--quick", action="store_true", help="two low rates, for the smoke test")
    parser.add_argument("--label", help="results folder name (default: today's date)")
    parser.add_argument("--rates", help="offered rates, comma separated (default: the sweep)")
    parser.add_argument(
        "--only",
        help="some systems only (gateway,bare,protocol,synchronous,hotpath); the "
        "report and docs are written only for a full run",
    )
    import uvloop

    sys.exit(uvloop.run(main(parser.parse_args())))
