"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gateway import __version__, logs
from gateway.config import Settings
from gateway.errors import ConfigError, Unavailable

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        settings = Settings.from_env(env_file=args.env_file)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from gateway.server import run

        if args.workers < 1 or args.workers > 64:
            print("gateway: --workers must be between 1 and 64", file=sys.stderr)
            return 2
        try:
            return run(
                settings, args.host or settings.host, args.port or settings.port, args.workers
            )
        except Unavailable as exc:
            log.error("cannot start", extra={"error": exc.detail})
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
