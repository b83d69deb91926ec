"""The benchmarks keep working: each runs for a moment at a tiny size (no figures asserted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(module: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return orjson.loads(out.stdout)


def test_writebehind_benchmark_smoke():
    result = run("benchmarks.writebehind", "--checkouts", "60", "--repeats", "1")
    assert {m["method"] for m in result["methods"]} == {"executemany", "unnest", "copy", "gateway"}
    assert [d["batch_size"] for d in result["drain"]] == [100, 500, 2000]
    assert all(d["events"] == result["events"] for d in result["drain"])


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_return_rate_benchmark_smoke():
    result = run(
        "benchmarks.return_rate", "--payments", "300", "--seconds", "1", "--connections", "2"
    )
    assert result["non_303"] == 0
    assert result["bookings_in_postgres"] == result["bookings_in_redis"] > 0
