"""The ``gateway`` command's refusals: each a one-line error naming what to change, with its
documented exit status, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse

import pytest

from tests.conftest import REDIS_URL, base_env
from tests.services import free_port

SECRETS = ("return-secret-0123456789", "payusalt-0123456789", "rzp-secret-xyz")


def gateway(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` in an environment of exactly ``env`` (no GATEWAY_* of the caller's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int, *names: str) -> str:
    """The run ended with ``status`` and a single plain line naming ``names``; that line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("gateway: ")]
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    for secret in SECRETS:
        assert secret not in result.stderr
    return lines[0]


@pytest.fixture
def env(prefix, database_url, tmp_path):
    return base_env(
        prefix,
        GATEWAY_PORT=str(free_port()),
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_DATABASE_URL=database_url,
    )


@pytest.mark.parametrize("command", ["serve", "worker", "migrate", "reconcile"])
def test_a_real_provider_without_service_urls_refuses_to_start(env, command):
    del env["GATEWAY_REDIS_URL"], env["GATEWAY_DATABASE_URL"]
    line = one_line_error(gateway(env, command), 2, "GATEWAY_REDIS_URL", "GATEWAY_DATABASE_URL")
    assert "GATEWAY_DEVELOPMENT" in line


def test_only_the_missing_url_is_named(env):
    del env["GATEWAY_REDIS_URL"]
    line = one_line_error(gateway(env, "serve"), 2, "GATEWAY_REDIS_URL")
    assert "GATEWAY_DATABASE_URL" not in line


@pytest.mark.parametrize("flag", ["GATEWAY_DEVELOPMENT", "GATEWAY_SANDBOX"])
def test_development_may_use_the_local_servers(env, flag):
    """The explicit development flag (or the sandbox) keeps the fallback, and the start says
    at warning level that a store was not configured."""
    del env["GATEWAY_REDIS_URL"]
    result = gateway({**env, flag: "true"}, "migrate")
    assert result.returncode == 0, result.stderr
    chosen = [line for line in result.stderr.splitlines() if '"services chosen"' in line]
    assert len(chosen) == 1 and '"level":"warning"' in chosen[0], result.stderr


def test_configured_services_are_said_at_info(env):
    result = gateway(env, "migrate")
    assert result.returncode == 0, result.stderr
    chosen = [line for line in result.stderr.splitlines() if '"services chosen"' in line]
    assert len(chosen) == 1 and '"level":"info"' in chosen[0], result.stderr


def with_db(url: str, db: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{db}"))


@pytest.mark.parametrize("db", ["abc", "-1", "1x"])
def test_a_redis_url_with_a_bad_database_is_a_configuration_error(env, db):
    env["GATEWAY_REDIS_URL"] = with_db(REDIS_URL, db)
    one_line_error(gateway(env, "migrate"), 2, "GATEWAY_REDIS_URL")


@pytest.mark.parametrize("command", ["serve", "worker", "reconcile"])
def test_a_redis_database_the_server_refuses(env, command):
    env["GATEWAY_REDIS_URL"] = with_db(REDIS_URL, "99")
    one_line_error(gateway(env, command), 2, "GATEWAY_REDIS_URL", "99")


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1", "not an address"])
def test_a_bad_host(env, host):
    one_line_error(gateway({**env, "GATEWAY_HOST": host}, "serve"), 2, "GATEWAY_HOST")


def test_an_unwritable_data_folder(env, tmp_path):
    occupied = tmp_path / "a-file"
    occupied.write_text("not a folder\n")
    env["GATEWAY_DATA_DIR"] = str(occupied / "data")
    one_line_error(gateway(env, "serve", "--workers", "2"), 2, "GATEWAY_DATA_DIR")


@pytest.mark.parametrize("down", ["GATEWAY_REDIS_URL", "GATEWAY_DATABASE_URL"])
def test_reconcile_with_a_dependency_down(env, down):
    nothing = free_port()
    env[down] = (
        f"redis://127.0.0.1:{nothing}/0"
        if down == "GATEWAY_REDIS_URL"
        else f"postgresql://postgres:pw-not-shown@127.0.0.1:{nothing}/x"
    )
    line = one_line_error(gateway(env, "reconcile", timeout=60), 3, down)
    assert "pw-not-shown" not in line
