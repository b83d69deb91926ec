"""Where ``serve`` listens: a port another gateway already serves is refused unless sharing
it is asked for (``--share-port``), and a port or address it cannot have is one line naming
the setting, never a traceback.

The serving sockets have SO_REUSEPORT (the processes of ``--workers N`` each bind their own),
which would let a second gateway share the port silently: before any is bound, one plain
bind without it says whether anything listens there already (decision 43).
"""

from __future__ import annotations

import errno
import http.client
import socket

import orjson
import tornado.netutil

from gateway.errors import ConfigError


def check_port(host: str, port: int) -> None:
    """Raise ``ConfigError`` unless ``host:port`` is free for this gateway."""
    try:
        sockets = tornado.netutil.bind_sockets(port, host, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            pid = gateway_pid(host, port)
            if pid is not None:
                raise ConfigError(
                    f"another gateway (pid {pid}) already serves {host}:{port}; stop it, choose "
                    "another GATEWAY_PORT (or --port), or pass --share-port to share the port "
                    "on purpose"
                ) from None
            raise ConfigError(
                f"{host}:{port} is in use by another program; choose another GATEWAY_PORT "
                "(or --port)"
            ) from None
        raise ConfigError(cannot_listen(host, port, exc)) from None
    for sock in sockets:
        sock.close()


def bind(host: str, port: int) -> list[socket.socket]:
    """A serving process's listening sockets, with SO_REUSEPORT (its siblings share them);
    ``ConfigError`` when they cannot be had."""
    try:
        return tornado.netutil.bind_sockets(port, host, reuse_port=True)
    except OSError as exc:
        raise ConfigError(cannot_listen(host, port, exc)) from None


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"GATEWAY_HOST (or --host): {host!r} is not an address of this host ({exc.strerror})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"GATEWAY_HOST (or --host): {host} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"GATEWAY_PORT (or --port): not allowed to listen on port {port} ({exc.strerror})"
    reason = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port} (GATEWAY_HOST, GATEWAY_PORT): {reason}"


def gateway_pid(host: str, port: int, timeout: float = 2.0) -> int | None:
    """The pid a gateway on ``host:port`` gives in its ``/healthz``; None when what listens
    there does not answer as a gateway."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    conn = http.client.HTTPConnection(target, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        body = orjson.loads(reply.read(4096)) if reply.status == 200 else None
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
        return None
    finally:
        conn.close()
    if isinstance(body, dict) and body.get("status") == "ok" and isinstance(body.get("pid"), int):
        return int(body["pid"])
    return None
