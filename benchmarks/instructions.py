"""Instructions per return in one serving process, counted by callgrind: a figure that does
not drift with the host.

    python -m benchmarks.instructions [--returns 1000] [--systems gateway,hotpath,bare,protocol]

End-to-end CPU figures on this VM move by 5-15 % from run to run, more than most changes to
the return path are worth. ``valgrind --tool=callgrind`` counts the instructions a process
executes instead; the same build gives the same count twice (within 0.1 %), whatever else
the machine does. Each system runs as one process under callgrind, with instrumentation
switched on only while ``--returns`` returns are sent one after another over one
connection (after 200 unmeasured ones). Then, for the same wall time with no requests,
the count of the process's idle work (its timers, which run far more often per request
under valgrind's slowdown) is taken and subtracted. The gateway's queue monitor reads Redis
once at start only (``GATEWAY_QUEUE_MONITOR_S=3600``): its cost depends on the streams'
state, which the measured returns change, so it would not subtract cleanly.

The gateway runs with prometheus-client's multiprocess mode (as ``--workers 2`` does) and
no write-behind (``GATEWAY_WB_IN_PROCESS=false``): this is the serving process alone. The
count leaves out the kernel's work for the process's system calls, so it ranks changes
to the process's own code; it does not replace the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import openloop, systems
from benchmarks.__main__ import postgres_admin_url
from benchmarks.return_rate import process_tree

WARM = 200


def callgrind_control(pid: int, *args: str) -> None:
    for p in process_tree(pid):  # the baselines serve from a forked child
        subprocess.run(["callgrind_control", *args, str(p)], capture_output=True, check=False)


def dumped_instructions(folder: str) -> int:
    """The instructions in the dumps callgrind wrote since the last zeroing."""
    total = 0
    for path in Path(folder).glob("cg.*"):
        values = [
            int(line.split()[1])
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith(("summary:", "totals:"))
        ]
        total += max(values, default=0)
        path.unlink()
    return total


async def measure(kind: str, returns: int, redis_url: str, admin: str) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="gw-callgrind-")
    system: Any = {
        "gateway": lambda: systems.Gateway(1, admin, redis_url),
        "hotpath": lambda: systems.HotPath(1, redis_url),
        "bare": lambda: systems.Bare(1),
        "protocol": lambda: systems.BareProtocol(1),
    }[kind]()
    system.command_prefix = (
        *("valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no"),
        f"--callgrind-out-file={folder}/cg.%p",
    )
    system.startup_s = 600.0  # python starts slowly under valgrind

    async def nothing_to_drain() -> None:  # no write-behind runs: the events stay queued
        return None

    system.drained = nothing_to_drain
    await system.start()
    try:
        requests = await system.prepare(WARM + returns)
        reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
        statuses: dict[str, int] = {}
        for request in requests[:WARM]:
            writer.write(request)
            await openloop._read_response(reader)
        callgrind_control(system.proc.pid, "-z")
        callgrind_control(system.proc.pid, "-i", "on")
        started = time.perf_counter()
        for request in requests[WARM:]:
            writer.write(request)
            status, _ = await openloop._read_response(reader)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        wall = time.perf_counter() - started
        callgrind_control(system.proc.pid, "-d")
        busy = dumped_instructions(folder)
        await asyncio.sleep(wall)  # the same time with nothing to serve
        callgrind_control(system.proc.pid, "-d")
        idle = dumped_instructions(folder)
        callgrind_control(system.proc.pid, "-i", "off")
        writer.close()
    finally:
        await system.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "system": kind,
        "returns": returns,
        "statuses": statuses,
        "instructions_per_return": round((busy - idle) / returns),
        "idle_instructions_subtracted_per_return": round(idle / returns),
        "seconds_under_callgrind": round(wall, 1),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    metrics_dir = tempfile.mkdtemp(prefix="gw-metrics-")
    # what the servers inherit: the same hashing (the same count), the serving process alone
    # (no write-behind), and prometheus-client's multiprocess mode as with --workers 2
    os.environ.update(
        PYTHONHASHSEED="0",
        GATEWAY_WB_IN_PROCESS="false",
        GATEWAY_QUEUE_MONITOR_S="3600",  # once at start: its reads are not the return's work
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
    )
    sweep_redis = systems.SweepRedis("unix")
    url = sweep_redis.start()
    out = []
    try:
        for kind in args.systems.split(","):
            out.append(await measure(kind.strip(), args.returns, url, postgres_admin_url()))
            print(orjson.dumps(out[-1]).decode(), file=sys.stderr, flush=True)
    finally:
        sweep_redis.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--returns", type=int, default=1000)
    parser.add_argument("--systems", default="gateway,hotpath,bare,protocol")
    print(orjson.dumps(asyncio.run(main(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())
