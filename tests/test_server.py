"""``gateway serve`` as a real process: configuration errors, SIGTERM, several workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_client

from tests import payu_sign
from tests.conftest import API_KEY, PAYU_SALT, REDIS_URL, base_env, drop_keys
from tests.services import free_port


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not come up")


def worker_pids(port: int, want: int = 2) -> set[int]:
    """The pids that answer /healthz on ``port``, asked until ``want`` of them have."""
    pids: set[int] = set()
    for _ in range(200):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            pids.add(orjson.loads(r.read())["pid"])
        if len(pids) == want:
            break
    return pids


@pytest.fixture
def env(prefix, razorpay_api, database_url):
    port = free_port()
    return base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
        GATEWAY_REDIS_URL=REDIS_URL,
        # the test's own database: unset, the gateway would write to the local server's
        # `gateway` database (its zero-configuration default) and leave it behind
        GATEWAY_DATABASE_URL=database_url,
    )


@pytest.mark.parametrize(
    "change,name",
    [
        ({"GATEWAY_RETURN_SECRET": ""}, "GATEWAY_RETURN_SECRET"),
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ({"GATEWAY_SUCCESS_URL": "ftp://x"}, "GATEWAY_SUCCESS_URL"),
        ({"GATEWAY_API_KEYS": ""}, "GATEWAY_API_KEYS"),
        ({"GATEWAY_PAYU_SALT": ""}, "GATEWAY_PAYU_SALT"),
        ({"GATEWAY_CART_TTL_S": "-1"}, "GATEWAY_CART_TTL_S"),
    ],
)
def test_config_errors_name_the_variable(env, change, name):
    proc = start({**env, **change})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert name in err.decode()
    for secret in ("return-secret-0123456789", "payusalt-0123456789", API_KEY):
        assert secret not in err.decode()


async def test_sigterm_finishes_in_flight_requests(env, razorpay_api, prefix):
    port = int(env["GATEWAY_PORT"])
    proc = start(env)
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        from tornado.httpclient import AsyncHTTPClient

        http = AsyncHTTPClient(force_instance=True)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        cart = await asyncio.to_thread(cart_of_one, port)
        razorpay_api.delay = 1.0  # the payment call will be in flight when SIGTERM comes
        pending = asyncio.ensure_future(
            http.fetch(
                f"{base}/v1/carts/{cart['cart_id']}/payments",
                method="POST",
                headers=auth,
                raise_error=False,
                request_timeout=30,
                body=orjson.dumps(
                    {
                        "provider": "razorpay",
                        "customer": {"firstname": "A", "email": "a@b.co", "phone": "9876543210"},
                    }
                ),
            )
        )
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        resp = await asyncio.wait_for(pending, 30)
        assert resp.code == 201, resp.body
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
        http.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


async def test_sigterm_finishes_a_return_in_flight(env, prefix):
    """A return the lane is answering when SIGTERM comes (Redis held up by CLIENT PAUSE) is
    settled and answered before the process exits."""
    port = int(env["GATEWAY_PORT"])
    proc = start(env)
    redis = redis_client.Redis.from_url(REDIS_URL)
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        cart = await asyncio.to_thread(cart_of_one, port)
        customer = {"firstname": "A", "email": "a@b.co", "phone": "9876543210"}
        payload = {"provider": "payu", "customer": customer}
        path = f"/v1/carts/{cart['cart_id']}/payments"
        payment = await asyncio.to_thread(api, port, path, payload)
        form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
        body = urllib.parse.urlencode(form).encode()
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        await redis.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        writer.write(
            b"POST /v1/payments/payu/return HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await asyncio.wait_for(writer.drain(), 10)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 303 ")
        assert b"status=success" in head and b"booking_id=" in head
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        await redis.aclose()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


def api(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A merchant call (POST, JSON) to the gateway on ``port``: its answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return dict(orjson.loads(r.read()))


def cart_of_one(port: int) -> dict[str, Any]:
    """A cart holding one service, made through the gateway's API."""
    cart = api(port, "/v1/carts", {"user_id": "u", "currency": "INR"})
    item = {"service_id": "s", "name": "S", "unit_amount": 100, "quantity": 1}
    api(port, f"/v1/carts/{cart['cart_id']}/items", item)
    return cart


async def test_workers_share_the_port(env, prefix):
    port = int(env["GATEWAY_PORT"])
    proc = start(env, "--workers", "2")
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        pids = await asyncio.to_thread(worker_pids, port)
        assert len(pids) == 2 and proc.pid not in pids
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


async def test_workers_do_not_outlive_a_killed_supervisor(env, prefix):
    port = int(env["GATEWAY_PORT"])
    proc = start(env, "--workers", "2")
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        pids = await asyncio.to_thread(worker_pids, port)
        assert len(pids) == 2
        proc.kill()  # SIGKILL: the supervisor cannot forward anything
        proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            await asyncio.sleep(0.1)
    finally:
        for pid in pids if "pids" in locals() else set():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[16])


def _call(port: int, method: str, path: str, body: dict | None = None, form: bytes | None = None):
    data = form if form is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {API_KEY}")
    request.add_header(
        "Content-Type", "application/x-www-form-urlencoded" if form else "application/json"
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


async def test_workers_have_a_write_behind_process_beside_them(env, prefix, database_url):
    """--workers 2: two serving processes and one write-behind process at GATEWAY_WB_NICE
    (decision 30); a return served by either lands in PostgreSQL through it."""
    import asyncpg

    from tests import payu_sign
    from tests.conftest import PAYU_SALT

    port = int(env["GATEWAY_PORT"])
    proc = start(env, "--workers", "2")
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        serving = await asyncio.to_thread(worker_pids, port)
        children = _children(proc.pid)
        assert len(children) == 3 and serving < set(children)
        (wb,) = set(children) - serving
        assert _nice(wb) == 10 and all(_nice(pid) == 0 for pid in serving)

        def checkout() -> str:
            _, _, raw = _call(port, "POST", "/v1/carts", {"user_id": "u-1", "currency": "INR"})
            cart_id = orjson.loads(raw)["cart_id"]
            item = {"service_id": "svc-1", "name": "Cleaning", "unit_amount": 49900, "quantity": 1}
            _call(port, "POST", f"/v1/carts/{cart_id}/items", item)
            customer = {"firstname": "Asha", "email": "asha@example.com", "phone": "+919876543210"}
            _, _, raw = _call(
                port,
                "POST",
                f"/v1/carts/{cart_id}/payments",
                {"provider": "payu", "customer": customer},
            )
            fields = orjson.loads(raw)["redirect"]["fields"]
            form = urllib.parse.urlencode(payu_sign.response_form(fields, "success", PAYU_SALT))
            status, headers, _ = _call(port, "POST", "/v1/payments/payu/return", form=form.encode())
            assert status == 303 and "status=success" in headers["Location"], headers
            return cart_id

        cart_id = await asyncio.to_thread(checkout)
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + 15
            query = "SELECT count(*) FROM bookings WHERE cart_id = $1"
            while True:
                with contextlib.suppress(asyncpg.UndefinedTableError):  # not migrated yet
                    if await conn.fetchval(query, cart_id):
                        break
                assert time.monotonic() < deadline, "the booking never reached PostgreSQL"
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert not any(_alive(pid) for pid in children)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


def plain_listener(port: int) -> socket.socket:
    """A listening socket that is not a gateway's (no SO_REUSEPORT, no HTTP)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def ended(proc: subprocess.Popen[bytes], seconds: float = 30) -> tuple[int, str]:
    """(exit status, stderr) of ``proc``, which must end within ``seconds``."""
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running after {seconds} s: {err.decode()[-2000:]}") from None
    return proc.returncode, err.decode()


def plain_errors(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("gateway: ")]


def quiet(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``gateway serve ARGS`` whose output nobody reads (a full pipe would stall it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_second_gateway_on_a_served_port_is_refused(env, prefix):
    port = int(env["GATEWAY_PORT"])
    first = quiet(env)
    try:
        await asyncio.to_thread(wait_ready, port, first)
        first_pid = (await asyncio.to_thread(worker_pids, port, 1)).pop()
        for args in ((), ("--workers", "2")):
            code, err = await asyncio.to_thread(ended, start(env, *args))
            lines = plain_errors(err)
            assert code == 2 and len(lines) == 1, err
            assert "another gateway" in lines[0] and str(port) in lines[0], lines
            assert "--share-port" in lines[0], lines
        # the first one still has the port to itself
        assert await asyncio.to_thread(worker_pids, port, 2) == {first_pid}
    finally:
        first.terminate()
        first.wait(30)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


async def test_share_port_is_sharing_on_purpose(env, prefix):
    port = int(env["GATEWAY_PORT"])
    first = quiet(env)
    second = None
    try:
        await asyncio.to_thread(wait_ready, port, first)
        second = quiet(env, "--share-port")
        deadline = time.monotonic() + 20
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            assert second.poll() is None, "the second gateway exited"
            pids |= await asyncio.to_thread(worker_pids, port, 2)
        assert len(pids) == 2, pids
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        await drop_keys(env["GATEWAY_REDIS_URL"], prefix)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_held_by_something_else(env, workers):
    port = int(env["GATEWAY_PORT"])
    with plain_listener(port):
        code, err = ended(start(env, "--workers", workers))
    lines = plain_errors(err)
    assert code == 2 and len(lines) == 1, err
    assert str(port) in lines[0] and "another gateway" not in lines[0], lines
    assert "worker exited, starting another" not in err


def test_a_supervisor_whose_workers_cannot_bind_stops_at_once(env):
    """--share-port skips the check for a held port: the workers' own binds fail, and the
    supervisor stops at the first failure instead of starting them again and again."""
    port = int(env["GATEWAY_PORT"])
    with plain_listener(port):
        code, err = ended(start(env, "--workers", "2", "--share-port"))
    lines = plain_errors(err)
    assert code != 0 and len(lines) == 1 and str(port) in lines[0], err
    assert "worker exited, starting another" not in err
