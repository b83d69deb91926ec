"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import asyncpg

from gateway import __version__, logs
from gateway.config import Settings
from gateway.embedded import EmbeddedError, resolve
from gateway.errors import ConfigError, Unavailable
from gateway.ports import check_port

log = logging.getLogger("gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Payment-return gateway: carts, payments and the provider's return.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--env-file",
        default=os.environ.get("GATEWAY_ENV_FILE") or None,
        help="a .env-style file of GATEWAY_* settings (the environment wins); "
        "default $GATEWAY_ENV_FILE",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--host", help="address to bind (default $GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default $GATEWAY_PORT or 8888)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, each with its own SO_REUSEPORT socket (default 1)",
    )
    serve.add_argument(
        "--share-port",
        action="store_true",
        help="share the port with a gateway already serving it (by default that is refused: "
        "a forgotten gateway would take part of the traffic)",
    )
    worker = sub.add_parser(
        "worker", help="run standalone write-behind workers (Redis streams -> PostgreSQL)"
    )
    worker.add_argument("--processes", type=int, default=1, help="processes (default 1)")
    worker.add_argument(
        "--name",
        help="consumer name prefix (default: host name); keep it stable across "
        "restarts so that a worker drains its own pending entries first",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (+ the process's slot); default off",
    )
    sub.add_parser("migrate", help="apply the PostgreSQL schema (safe to run again)")
    rec = sub.add_parser(
        "reconcile",
        help="compare every cart, payment and booking in Redis with PostgreSQL; "
        "exit 0 when they agree, 1 otherwise",
    )
    rec.add_argument(
        "--repair", action="store_true", help="enqueue what PostgreSQL lacks or holds differently"
    )
    rec.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the write-behind queue to drain (default 60)",
    )
    demo = sub.add_parser(
        "demo",
        help="make a cart with two services and a sandbox payment on a running gateway and "
        "print the page to open; with --auto, pay it and print the booking",
    )
    demo.add_argument("--auto", action="store_true", help="drive the whole flow, print the booking")
    demo.add_argument("--url", help="the running gateway (default: $GATEWAY_PUBLIC_URL)")
    return parser


# exit statuses (README, "Commands"): 1 a failure at run time (and, for reconcile,
# differences found), 2 a setting to change, 3 reconcile could not compare
EXIT_CONFIG = 2
EXIT_RECONCILE_UNAVAILABLE = 3


def multiprocess_dir(data_dir: Path, port: int) -> Path:
    """A fresh folder for prometheus-client's per-process files, named in the environment."""
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    setting = "PROMETHEUS_MULTIPROC_DIR" if named else "GATEWAY_DATA_DIR"
    folder = Path(named or data_dir / f"metrics-{port}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot write to {folder}: {exc.strerror or exc}") from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def _fail(message: str, status: int) -> int:
    """One line on stderr, whatever went wrong: never a traceback for what users can fix."""
    print(f"gateway: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        settings = Settings.from_env(env_file=args.env_file)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    if args.command == "serve":
        if not 1 <= args.workers <= 64:
            return _fail("--workers must be between 1 and 64", EXIT_CONFIG)
        settings = settings.at(args.host or settings.host, args.port or settings.port)
    if args.command == "worker" and not 1 <= args.processes <= 64:
        return _fail("--processes must be between 1 and 64", EXIT_CONFIG)
    if args.command == "demo":
        from gateway.demo import demo

        return demo(settings, sys.stdout, auto=args.auto, base_url=args.url)
    unset = settings.unset_services()
    if unset:
        providers = ", ".join(p for p in ("payu", "razorpay") if getattr(settings, p))
        return _fail(
            f"configuration error: {' and '.join(unset)} must be set when a payment provider "
            f"is configured ({providers}): in production the gateway never picks a data store "
            "by itself; on a development machine, GATEWAY_DEVELOPMENT=true lets it use local "
            "or embedded servers",
            EXIT_CONFIG,
        )
    try:
        if args.command == "serve" and not args.share_port:
            # before the embedded servers start, and before the metrics folder (of the
            # gateway that may hold the port) is emptied
            check_port(settings.host, settings.port)
        services = resolve(settings.redis_url, settings.database_url, settings.data_dir)
    except ConfigError as exc:
        return _fail(f"cannot start: {exc}", EXIT_CONFIG)
    except EmbeddedError as exc:
        return _fail(str(exc), 1)
    configured = services.redis_source == services.postgres_source == "configured"
    log.log(
        logging.INFO if configured else logging.WARNING,
        "services chosen",
        extra={"redis": services.redis_source, "postgresql": services.postgres_source},
    )
    settings = dataclasses.replace(
        settings, redis_url=services.redis_url, database_url=services.database_url
    )
    try:
        return _run(args, settings)
    except ConfigError as exc:  # the port, the Redis database, the data folder
        return _fail(f"cannot start: {exc}", EXIT_CONFIG)
    except Unavailable as exc:
        return _fail(f"cannot start: {exc.detail}", 1)
    finally:
        services.stop()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        import asyncio

        from store.pg_store import describe, migrate

        try:
            applied = asyncio.run(migrate(settings.database_url))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return _fail(f"migrate failed: {describe(exc, settings.database_url)}", 1)
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")
        return 0
    if args.command == "reconcile":
        import asyncio

        from gateway.reconcile import reconcile

        try:
            return asyncio.run(
                reconcile(
                    settings, sys.stdout, repair=args.repair, drain_timeout_s=args.drain_timeout
                )
            )
        except Unavailable as exc:
            return _fail(f"reconcile: {exc.detail}", EXIT_RECONCILE_UNAVAILABLE)
    if args.command == "worker":
        from gateway.server import run_processes, work

        return run_processes(
            args.processes, lambda slot: work(settings, slot, args.name, args.metrics_port)
        )
    if args.workers > 1:
        # before anything imports prometheus-client: it picks its mode at import
        metrics_dir = multiprocess_dir(settings.data_dir, settings.port)
        log.info("metrics: multiprocess mode", extra={"dir": str(metrics_dir)})
    from gateway.server import run

    return run(settings, settings.host, settings.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
