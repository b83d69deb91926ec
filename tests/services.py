"""The servers the tests use, resolved as the gateway resolves its own: TEST_REDIS_URL /
TEST_DATABASE_URL, else the local ones on their default ports, else the gateway's embedded
servers (``gateway/embedded.py``), here in temporary folders, stopped when the tests exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.embedded import EmbeddedPostgres, EmbeddedRedis


def _answers(host: str, port: int, locked_too: bool = False) -> bool:
    """Redis answers PING there (``locked_too``: or asks for a password)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH") if locked_too else b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    extra: list[str] | None = None,
    port: int | None = None,
    prefix: list[str] | None = None,
    startup_s: float = 10.0,
    folder: str | None = None,
) -> tuple[subprocess.Popen[bytes], int, str]:
    """A redis-server of the test's own (on ``port``, else a free one; run by ``prefix``,
    e.g. valgrind, when given; in ``folder``, else a new one); returns (process, port,
    folder)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder = folder or tempfile.mkdtemp(prefix="gw-redis-")
    port = port or free_port()
    proc = subprocess.Popen(
        [
            *(prefix or []),
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            folder,
            *(extra or []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + startup_s
    while not _answers("127.0.0.1", port, locked_too=True):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc, port, folder


def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        return url
    if _answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    folder = tempfile.mkdtemp(prefix="gw-redis-")
    server = EmbeddedRedis(Path(folder), ephemeral=True)
    server.start()

    def stop() -> None:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return server.url


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (the gateway's embedded one, in a temporary
    folder, fsync off); it can be stopped and started again."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="gw-pg-")
        os.chmod(self.folder, 0o755)  # the unprivileged user PostgreSQL runs as must reach it
        self.server = EmbeddedPostgres(Path(self.folder) / "pg", port=free_port(), ephemeral=True)
        self.url = self.server.url("postgres")

    def start(self) -> None:
        self.server.start()

    def stop(self, mode: str = "fast") -> None:
        self.server.stop(mode)

    def remove(self) -> None:
        self.server.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def _pg_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def postgres_admin_url() -> str:
    """A URL of a PostgreSQL where the tests may create and drop databases."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    if _pg_answers("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    own = OwnPostgres()
    own.start()
    atexit.register(own.remove)
    return own.url
