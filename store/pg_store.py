"""PostgreSQL: the durable record. All SQL of the carts, payments and bookings tables is here.

Writes are idempotent batch upserts; a row only moves forward (``WHERE table.rev <
EXCLUDED.rev``). Per table, a batch of up to ``COPY_FROM_ROWS`` rows is one ``INSERT …
SELECT FROM jsonb_array_elements($1) ON CONFLICT``, its rows sent as one JSON document (one
text parameter: asyncpg's per-element encoding of one array per column cost the worker four
times the CPU, decision 33); a larger one is COPYed into a temporary staging table, then
``INSERT … SELECT … ON CONFLICT`` (decision 9 in docs/decisions.md has the figures).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import orjson

from store.events import BOOKING_COLUMNS, CART_COLUMNS, PAYMENT_COLUMNS, TIME_COLUMNS, Rows

log = logging.getLogger("gateway.pg")
SQL_DIR = Path(__file__).with_name("sql")
DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MIGRATE_LOCK = 0x6761_7465  # advisory lock key: one migrator at a time

_TYPES = {
    "total_amount": "int8",
    "amount": "int8",
    "version": "int4",
    "cart_version": "int4",
    "rev": "int4",
    "refund_required": "bool",
    "created_at": "int8",
    "updated_at": "int8",
    "expires_at": "int8",
}


COPY_FROM_ROWS = 300  # rows of one table in one batch; above it, COPY wins


def _field(expr: str, column: str, text: bool) -> str:
    """``expr`` as the value of ``column``: times from epoch milliseconds, the items as jsonb;
    ``text``: ``expr`` is JSON text (``e->>i``) and gets the column's type, else it already
    has it (typed arrays, the staging table)."""
    if column in TIME_COLUMNS:
        ms = f"{expr}::int8" if text else expr
        return f"'epoch'::timestamptz + {ms} * interval '1 millisecond'"
    if column == "items":
        return f"{expr}::jsonb"  # the row carries the items as JSON text
    return f"{expr}::{_TYPES[column]}" if text and column in _TYPES else expr


def _upsert(
    table: str, columns: Sequence[str], key: str, versioned: bool, force: bool, how: str = "json"
) -> str:
    """The upsert of a batch of rows, from ``how``: ``json`` (one JSON array of rows as $1),
    ``copy`` (the staging table) or ``unnest`` (one array per column; kept to compare)."""
    if how == "json":
        select = ", ".join(_field(f"(e->>{i})", c, True) for i, c in enumerate(columns))
        source = "jsonb_array_elements($1::text::jsonb) AS e"
    else:
        select = ", ".join(_field(f"t.{c}", c, False) for c in columns)
        arrays = ", ".join(f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(columns, 1))
        source = (
            f"stage_{table} AS t"
            if how == "copy"
            else f"unnest({arrays}) AS t({', '.join(columns)})"
        )
    sql = (
        # built once at import from the constant column lists above: no input reaches it
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} "  # noqa: S608
        f"FROM {source} "
    )
    if not versioned:
        return sql + f"ON CONFLICT ({key}) DO NOTHING"
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    # Replays (force=False) change nothing at an equal rev; a repair rewrites an equal rev.
    op = "<=" if force else "<"
    return sql + f"ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {table}.rev {op} EXCLUDED.rev"


def _select(table: str, columns: Sequence[str], key: str) -> str:
    cols = ", ".join(
        f"(extract(epoch from {c}) * 1000)::int8 AS {c}"
        if c in TIME_COLUMNS
        else f"{c}::text AS {c}"
        if c == "items"
        else c
        for c in columns
    )
    return f"SELECT {cols} FROM {table} WHERE {key} = ANY($1::text[])"  # noqa: S608


TABLES = {
    "carts": (CART_COLUMNS, "cart_id", True),
    "payments": (PAYMENT_COLUMNS, "txnid", True),
    "bookings": (BOOKING_COLUMNS, "booking_id", False),
}
# (how, table + "!" when forced) -> SQL
UPSERT = {
    (how, name + bang): _upsert(name, cols, key, versioned, bang == "!", how)
    for how in ("json", "copy", "unnest")
    for name, (cols, key, versioned) in TABLES.items()
    for bang in ("", "!")
}
STAGE_DDL = {
    name: f"CREATE TEMP TABLE IF NOT EXISTS stage_{name} ("
    + ", ".join(f"{c} {'text' if c == 'items' else _TYPES.get(c, 'text')}" for c in cols)
    + ") ON COMMIT DELETE ROWS"
    for name, (cols, _, _) in TABLES.items()
}
SELECT = {
    "carts": _select("carts", CART_COLUMNS, "cart_id"),
    "payments": _select("payments", PAYMENT_COLUMNS, "txnid"),
    "bookings": _select("bookings", BOOKING_COLUMNS, "booking_id"),
}


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols


async def write_rows(
    conn: asyncpg.Connection, rows: Rows, force: bool = False, how: str | None = None
) -> None:
    """Upsert a batch's rows on ``conn`` (the caller owns the transaction). ``how`` forces
    one way of writing (``json``, ``copy``, ``unnest``: the benchmark compares them); by
    default a table's rows go by COPY above ``COPY_FROM_ROWS``, as one JSON document below."""
    bang = "!" if force else ""
    for name, data in (
        ("carts", rows.carts),
        ("payments", rows.payments),
        ("bookings", rows.bookings),
    ):
        if not data:
            continue
        columns = TABLES[name][0]
        way = how or ("copy" if len(data) > COPY_FROM_ROWS else "json")
        sql = UPSERT[way, name + bang]
        if way == "copy":
            await conn.execute(STAGE_DDL[name])
            await conn.copy_records_to_table(
                f"stage_{name}", records=list(data.values()), columns=columns
            )
            await conn.execute(sql)
        elif way == "json":
            await conn.execute(sql, orjson.dumps(list(data.values())).decode())
        else:
            await conn.execute(sql, *_columns(data.values(), len(columns)))


def as_hash(record: asyncpg.Record) -> dict[str, str]:
    """A row in the shape of its Redis hash (strings), so one view serves both."""
    out: dict[str, str] = {}
    for key, value in record.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool):
            out[key] = "1" if value else "0"
        else:
            out[key] = str(value)
    return out


def describe(exc: BaseException, dsn: str) -> str:
    """A PostgreSQL error as operators may see it (logs, ``/readyz``, a command's error
    line): never the DSN or its password."""
    text = f"{type(exc).__name__}: {exc}"
    password = urlsplit(dsn).password
    for secret in (dsn, password, unquote(password or "")):
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def public_error(exc: BaseException) -> str:
    """A PostgreSQL error as an unauthenticated caller may see it (``/readyz``): its class
    and SQLSTATE, not its text, which may name roles, databases and hosts."""
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} (SQLSTATE {sqlstate})" if sqlstate else type(exc).__name__


class PgStore:
    """A pool that connects lazily: the gateway starts, and serves, with PostgreSQL down."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn
        self._closed = False
        # (call, seconds) of every call; gateway.metrics wires it up
        self.observe: Callable[[str, float], None] = lambda call, seconds: None

    @classmethod
    async def open(cls, dsn: str, max_size: int = 4) -> PgStore:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            command_timeout=30,
            timeout=5,
            max_inactive_connection_lifetime=60,
            # The worker acknowledges an event once its COMMIT returns: that COMMIT must be
            # durable even where the server's default is asynchronous commit.
            server_settings={"synchronous_commit": "on", "application_name": "gateway"},
        )
        return cls(pool, dsn)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.pool.close()

    async def __aenter__(self) -> PgStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def fetch(self, table: str, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Rows of ``table`` by primary key, each in its Redis hash shape."""
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn:
                records = await conn.fetch(SELECT[table], list(ids))
        finally:
            self.observe("fetch", time.perf_counter() - started)
        return {r[0]: as_hash(r) for r in records}

    async def fetch_one(self, table: str, key: str) -> dict[str, str] | None:
        return (await self.fetch(table, [key])).get(key)


async def migrate(dsn: str) -> list[str]:
    """Apply the SQL files of ``store/sql`` not yet applied, in order; create the database if
    it does not exist. Safe to run again, and from several processes at once."""
    conn = await _connect_creating(dsn)
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in sorted(SQL_DIR.glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                if version in done:
                    continue
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
                applied_now.append(path.name)
    finally:
        await conn.close()
    return applied_now


async def _connect_creating(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=5)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        name = parts.path.lstrip("/")
        if not DB_NAME_RE.match(name):
            raise
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=5)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            log.info("database created", extra={"database": name})
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
        return await asyncpg.connect(dsn, timeout=5)
