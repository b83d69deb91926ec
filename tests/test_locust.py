"""A smoke run of ``benchmarks/locustfile.py`` against ``gateway serve``, to keep it working.

The benchmark itself is not part of the suite: this runs five users for a few seconds and
checks that the flow works end to end (every return a correct 303) and that the reports are
written.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, PAYU_SALT, REDIS_URL, base_env, drop_keys
from tests.services import free_port
from tests.test_server import wait_ready

# Only whether it is installed: importing locust here monkey-patches the process with gevent
# after ssl was imported, and its ssl context then recurses without end (a collection error).
# The test runs locust in a process of its own.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed (the 'bench' extra of pyproject)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
RETURN = "POST /v1/payments/payu/return"


def locust_command(port: int, out: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "5",
        "-r",
        "5",
        "-t",
        "6s",
        "--host",
        f"http://127.0.0.1:{port}",
        "--csv",
        str(out / "run"),
        "--html",
        str(out / "report.html"),
        "--exit-code-on-error",
        "1",
    ]


async def test_locustfile_runs_the_payu_flow(prefix, database_url, razorpay_api, tmp_path):
    port = free_port()
    env = base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
    )
    log_path = tmp_path / "gateway.log"
    # The gateway logs every request: to a file, since a pipe nobody reads would fill up and
    # stall it.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def gateway_log() -> str:
        return "\n--- gateway log ---\n" + log_path.read_text(errors="replace")[-3000:]

    try:
        try:
            await asyncio.to_thread(wait_ready, port, proc)
        except AssertionError as e:
            raise AssertionError(f"{e}{gateway_log()}") from None
        run = await asyncio.to_thread(
            subprocess.run,
            locust_command(port, tmp_path),
            env={
                **os.environ,
                "GATEWAY_BENCH_API_KEY": API_KEY,
                "GATEWAY_BENCH_PAYU_SALT": PAYU_SALT,
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + gateway_log()

        with open(tmp_path / "run_stats.csv", newline="") as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        assert RETURN in rows, sorted(rows)
        assert int(rows[RETURN]["Request Count"]) > 0, rows[RETURN]
        assert int(rows[RETURN]["Failure Count"]) == 0, rows[RETURN]
        report = tmp_path / "report.html"
        assert report.exists() and report.stat().st_size > 0

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, gateway_log()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(REDIS_URL, prefix)
