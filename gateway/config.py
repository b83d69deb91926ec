"""Settings: one frozen object, read once from the environment at start.

Every value is cast and checked here; a bad value raises ``ConfigError`` naming the variable.
An empty variable counts as unset. A ``.env``-style file may supply values the environment
lacks (the environment wins).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from gateway.errors import ConfigError
from store.writebehind import WriteBehindConfig

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


@dataclass(frozen=True)
class PayUCredentials:
    key: str
    salt: str = field(repr=False)


@dataclass(frozen=True)
class RazorpayCredentials:
    key_id: str
    key_secret: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    api_url: str = "https://api.razorpay.com"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from its environment."""

    redis_url: str  # "" until gateway.embedded.resolve() has chosen (unset in the environment)
    database_url: str  # likewise
    host: str
    port: int
    public_url: str
    api_keys: tuple[str, ...] = field(repr=False)
    success_url: str  # the built-in demo page when GATEWAY_SUCCESS_URL is unset
    failure_url: str
    return_secret: bytes = field(repr=False)
    payu: PayUCredentials | None
    razorpay: RazorpayCredentials | None
    cart_ttl_s: int
    payment_window_s: int
    data_dir: Path
    sandbox: bool
    redis_prefix: str
    partitions: int
    payu_payment_url: str = "https://secure.payu.in/_payment"
    # GATEWAY_DEVELOPMENT: with a real provider configured, may still pick local or embedded
    # Redis and PostgreSQL when their URLs are unset (development only, never production)
    development: bool = False
    writebehind: WriteBehindConfig = field(default_factory=WriteBehindConfig)
    writebehind_in_process: bool = True  # serve runs the write-behind (decision 30 says where)
    writebehind_nice: int = 10  # its niceness when it has a process of its own
    ready_max_lag_s: float = 30.0
    queue_monitor_s: int = 1  # how often each process reads the queue's length and lag
    ready_fail_on_lag: bool = False
    request_metrics: bool = True
    return_lane: bool = True  # the browser's return below RequestHandler (decision 35)
    max_body_bytes: int = 16 * 1024
    # a connection idle, or still sending a request's head, this long is closed (Tornado's
    # idle_connection_timeout, which bounds its head too); a body must arrive within
    # body_timeout_s of its head
    idle_timeout_s: float = 60.0
    body_timeout_s: float = 30.0
    max_connections: int = 10_000  # per serving process; lowered to fit its descriptor limit

    def at(self, host: str, port: int) -> Settings:
        """These settings for a server on ``host:port`` (``serve --host/--port``): the public URL
        and the demo pages follow unless they were configured."""
        if (host, port) == (self.host, self.port):
            return self
        old, new = f"http://{self.host}:{self.port}", f"http://{host}:{port}"
        public = new if self.public_url == old else self.public_url

        def moved(url: str) -> str:
            return public + url[len(old) :] if url.startswith(old + "/demo/") else url

        return dataclasses.replace(
            self,
            host=host,
            port=port,
            public_url=public,
            success_url=moved(self.success_url),
            failure_url=moved(self.failure_url),
        )

    @property
    def demo_pages(self) -> bool:
        """The built-in success/failure pages are in use (a URL was not configured)."""
        own = f"{self.public_url}/demo/"
        return self.success_url.startswith(own) or self.failure_url.startswith(own)

    def unset_services(self) -> list[str]:
        """The service URLs that must be set and are not: with a real provider configured,
        outside the sandbox and without GATEWAY_DEVELOPMENT, the gateway never picks a data
        store by itself (production would take whatever answers on a default port)."""
        if self.sandbox or self.development:
            return []
        return [
            name
            for name, url in (
                ("GATEWAY_REDIS_URL", self.redis_url),
                ("GATEWAY_DATABASE_URL", self.database_url),
            )
            if not url
        ]

    @property
    def sandbox_salt(self) -> str:
        """The sandbox's PayU-style salt: derived, so every process agrees without a setting."""
        return hmac.new(self.return_secret, b"gateway sandbox salt", hashlib.sha256).hexdigest()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
    ) -> Settings:
        """Read and check the settings; ``environ`` defaults to ``os.environ``."""
        env = _Env(environ if environ is not None else os.environ, env_file)
        host = env.text("GATEWAY_HOST", "127.0.0.1")
        port = env.integer("GATEWAY_PORT", 8888, low=1, high=65535)
        public_url = env.url("GATEWAY_PUBLIC_URL", f"http://{host}:{port}").rstrip("/")
        keys = tuple(k.strip() for k in env.text("GATEWAY_API_KEYS", "").split(",") if k.strip())
        if not keys:
            raise ConfigError("GATEWAY_API_KEYS: set at least one merchant API key")
        for key in keys:
            if len(key) < 16:
                raise ConfigError("GATEWAY_API_KEYS: each key must be at least 16 characters")
        secret = env.text("GATEWAY_RETURN_SECRET", "")
        if len(secret) < 16:
            raise ConfigError("GATEWAY_RETURN_SECRET: required, at least 16 characters")

        payu = None
        payu_key, payu_salt = env.text("GATEWAY_PAYU_KEY", ""), env.text("GATEWAY_PAYU_SALT", "")
        if payu_key or payu_salt:
            if not (payu_key and payu_salt):
                raise ConfigError("GATEWAY_PAYU_KEY and GATEWAY_PAYU_SALT must be set together")
            payu = PayUCredentials(payu_key, payu_salt)

        razorpay = None
        rzp = [
            env.text(name, "")
            for name in (
                "GATEWAY_RAZORPAY_KEY_ID",
                "GATEWAY_RAZORPAY_KEY_SECRET",
                "GATEWAY_RAZORPAY_WEBHOOK_SECRET",
            )
        ]
        if any(rzp):
            if not all(rzp):
                raise ConfigError(
                    "GATEWAY_RAZORPAY_KEY_ID, GATEWAY_RAZORPAY_KEY_SECRET and "
                    "GATEWAY_RAZORPAY_WEBHOOK_SECRET must be set together"
                )
            api_url = env.url("GATEWAY_RAZORPAY_API_URL", "https://api.razorpay.com")
            razorpay = RazorpayCredentials(rzp[0], rzp[1], rzp[2], api_url.rstrip("/"))

        # The sandbox is for development: on when asked for, or when no provider is configured.
        sandbox = env.boolean("GATEWAY_SANDBOX", False) or (payu is None and razorpay is None)
        window = env.integer("GATEWAY_PAYMENT_WINDOW_S", 86400, low=60, high=30 * 86400)
        retention = env.integer("GATEWAY_RETENTION_S", 7 * 86400, low=60, high=365 * 86400)
        prefix = env.text("GATEWAY_REDIS_PREFIX", "gw")
        if not PREFIX_RE.match(prefix):
            raise ConfigError("GATEWAY_REDIS_PREFIX: 1-32 characters of A-Z a-z 0-9 _ . -")
        return cls(
            redis_url=_redis_url(env.url("GATEWAY_REDIS_URL", "", ("redis", "rediss", "unix"))),
            database_url=env.url("GATEWAY_DATABASE_URL", "", ("postgres", "postgresql")),
            host=host,
            port=port,
            public_url=public_url,
            api_keys=keys,
            success_url=env.url("GATEWAY_SUCCESS_URL", f"{public_url}/demo/success"),
            failure_url=env.url("GATEWAY_FAILURE_URL", f"{public_url}/demo/failure"),
            return_secret=secret.encode(),
            payu=payu,
            razorpay=razorpay,
            cart_ttl_s=env.integer("GATEWAY_CART_TTL_S", 3600, low=60, high=30 * 86400),
            payment_window_s=window,
            data_dir=Path(env.text("GATEWAY_DATA_DIR", ".gateway")),
            sandbox=sandbox,
            redis_prefix=prefix,
            development=env.boolean("GATEWAY_DEVELOPMENT", False),
            partitions=env.integer("GATEWAY_PARTITIONS", 16, low=1, high=256),
            payu_payment_url=env.url("GATEWAY_PAYU_PAYMENT_URL", "https://secure.payu.in/_payment"),
            writebehind=WriteBehindConfig(
                batch_size=env.integer("GATEWAY_WB_BATCH_SIZE", 500, low=1, high=10_000),
                max_wait_ms=env.integer("GATEWAY_WB_MAX_WAIT_MS", 250, low=1, high=10_000),
                claim_idle_ms=1000 * env.integer("GATEWAY_WB_CLAIM_IDLE_S", 30, low=1, high=86400),
                max_deliveries=env.integer("GATEWAY_WB_MAX_DELIVERIES", 5, low=1, high=1000),
                retention_s=retention,
                failed_retention_s=max(retention, window + 86400),
                trim_interval_s=env.integer("GATEWAY_WB_TRIM_INTERVAL_S", 10, low=0, high=86400),
            ),
            writebehind_in_process=env.boolean("GATEWAY_WB_IN_PROCESS", True),
            writebehind_nice=env.integer("GATEWAY_WB_NICE", 10, low=0, high=19),
            ready_max_lag_s=env.integer("GATEWAY_READY_MAX_LAG_S", 30, low=1, high=86400),
            queue_monitor_s=env.integer("GATEWAY_QUEUE_MONITOR_S", 1, low=1, high=3600),
            ready_fail_on_lag=env.boolean("GATEWAY_READY_FAIL_ON_LAG", False),
            request_metrics=env.boolean("GATEWAY_REQUEST_METRICS", True),
            return_lane=env.boolean("GATEWAY_RETURN_LANE", True),
            idle_timeout_s=env.integer("GATEWAY_IDLE_TIMEOUT_S", 60, low=1, high=3600),
            body_timeout_s=env.integer("GATEWAY_BODY_TIMEOUT_S", 30, low=1, high=3600),
            max_connections=env.integer("GATEWAY_MAX_CONNECTIONS", 10_000, low=16, high=1_000_000),
        )


def _redis_url(url: str) -> str:
    """``url`` when its database (``/N``, or ``?db=N`` for a Unix socket) is a number:
    redis-py reads ``/abc`` as database 0 without a word, where another deployment's data
    may live."""
    if not url:
        return url
    parts = urlsplit(url)
    named = [("path", parts.path.strip("/"))] if parts.scheme != "unix" else []
    named += [("db", v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    for _, db in named:
        if db and not (db.isascii() and db.isdigit() and int(db) < 2**31):
            raise ConfigError(f"GATEWAY_REDIS_URL: the database must be a number, got {db!r}")
    return url


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


class _Env:
    def __init__(self, environ: Mapping[str, str], env_file: str | Path | None) -> None:
        self._file = read_env_file(env_file) if env_file else {}
        self._environ = environ

    def _get(self, name: str) -> str | None:
        value = self._environ.get(name) or self._file.get(name)
        return value if value else None

    def text(self, name: str, default: str) -> str:
        value = self._get(name)
        return default if value is None else value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}, got {number}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")

    def url(
        self, name: str, default: str | None, schemes: tuple[str, ...] = ("http", "https")
    ) -> str:
        value = self._get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{name}: required")
            return default  # "" for "choose at start"
        parts = urlsplit(value)
        where = parts.path if parts.scheme == "unix" else parts.netloc  # unix:///run/r.sock
        if parts.scheme not in schemes or not where:
            raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL")
        if parts.fragment:
            raise ConfigError(f"{name}: must not have a #fragment")
        return value
