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
    assert {m["method"] for m in result["methods"]} == {
        "executemany",
        "unnest",
        "json",
        "copy",
        "gateway",
    }
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


def test_sweep_harness_smoke(tmp_path):
    """`python -m benchmarks --quick`: all five systems at two low rates, report written."""
    import secrets

    label = f"smoke-{secrets.token_hex(3)}"
    out = ROOT / "benchmarks" / "results" / label
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--seconds", "1", "--label", label],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "PostgreSQL holds exactly" in done.stderr
        report = orjson.loads((out / "sweep.json").read_bytes())
        assert [r["system"] for r in report["results"]] == [
            "gateway",
            "bare Tornado",
            "bare asyncio protocol",
            "synchronous PostgreSQL",
            "hot path (prototype)",
        ]
        assert all(len(r["points"]) == 2 for r in report["results"])
        for r in report["results"]:  # every request answered with the 303 it asked for
            assert all(p["errors"] == 0 for p in r["points"]), r
            assert all(p["status_303"] == p["completed"] > 0 for p in r["points"]), r
        assert report["redis"] == ("unix" if shutil.which("redis-server") else "tcp")
        assert report["postgres_matches"] is True
        assert (out / "latency.png").stat().st_size > 10_000
        assert "largest rate with p99" in (out / "summary.md").read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_instruction_count_benchmark_smoke():
    result = run("benchmarks.instructions", "--returns", "20", "--systems", "bare,protocol")
    assert [r["system"] for r in result] == ["bare", "protocol"]
    for r in result:
        assert r["statuses"] == {"303": 20}
        assert r["instructions_per_return"] > 0


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_redis_instruction_count_benchmark_smoke():
    result = run("benchmarks.redis_instructions", "--settles", "20")
    assert result["settles"] == 20
    assert result["outcomes"] == {"SUCCESS applied=True": 20}
    assert result["instructions_per_settle"] > 0
