"""The Redis the tests use: TEST_REDIS_URL, else the local one on 6379, else one started here.

A server started here lives in a temporary folder, keeps nothing on disk, and is stopped when
the test process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int, str]:
    """A redis-server of the test's own on a free port; returns (process, port, folder)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder = tempfile.mkdtemp(prefix="gw-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [
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
    deadline = time.monotonic() + 10
    while not _answers("127.0.0.1", port):
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
    proc, port, folder = start_redis()

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return f"redis://127.0.0.1:{port}/0"
