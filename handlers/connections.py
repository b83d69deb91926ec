"""The serving process's connections: how many may be open, and Tornado's share of them.

A process has a descriptor limit; every connection takes a descriptor, and so do Redis's and
PostgreSQL's pools. ``Connections`` counts the open connections of both servers of a
process (the return lane's and Tornado's), caps them below what the descriptor limit
leaves (``GATEWAY_MAX_CONNECTIONS``), sheds at the cap, logs when it does (at most every
10 s), and publishes the count once a second (``gateway_connections_open``).

``CountedHTTPServer`` is Tornado's ``HTTPServer`` with that count and cap, through the two
methods Tornado documents for it: ``TCPServer.handle_stream`` and the connection delegate's
``on_close``. ``HandedOverStream`` gives Tornado a connection the lane has started reading:
an ``IOStream`` whose ``read_from_fd`` (the documented way a stream reads) serves the
bytes already read before it reads the socket again.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

from gateway.metrics import Metrics

log = logging.getLogger("gateway.http")
RESERVED_FDS = 512  # Redis's pool (up to 256), PostgreSQL's, listening sockets, files
TICK_S = 1.0
DEFAULT_CHUNK = 65536  # IOStream's read_chunk_size when none is given
LOG_EVERY_S = 10.0


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the process's descriptor limit leaves for connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - RESERVED_FDS))


class Connections:
    """The count of a process's open connections, its cap, and what was shed at the cap."""

    def __init__(self, cap: int, metrics: Metrics) -> None:
        self.cap = cap
        self.open = 0
        self.metrics = metrics
        self.shed = {"evicted": 0, "refused": 0}  # since the last log line
        self.logged_at = 0.0
        self.tick: asyncio.TimerHandle | None = None
        self.on_tick: list[Callable[[], None]] = []

    def start(self) -> None:
        self.tick = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def stop(self) -> None:
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None

    def _tick(self) -> None:
        self.metrics.connections_open.set(self.open)
        for callback in self.on_tick:
            callback()
        self.tick = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    @property
    def full(self) -> bool:
        return self.open >= self.cap

    def shedding(self, action: str) -> None:
        """A connection was closed to stay within the cap: ``evicted`` (a connection that
        waited longest for its request) or ``refused`` (the new one)."""
        self.shed[action] += 1
        self.metrics.connections_shed.labels(action).inc()
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_S:
            self.logged_at = now
            log.warning(
                "connection cap reached: closing connections",
                extra={"open": self.open, "cap": self.cap, **self.shed},
            )
            self.shed = {"evicted": 0, "refused": 0}


class CountedHTTPServer(HTTPServer):
    """Tornado's server, counting its connections in ``connections``, and knowing which of
    them wait for a request (from ``start_request``, the delegate's documented hook, until
    the request has come whole: idle, or a head or body still arriving). At the cap a new
    connection closes the one that has waited longest; when none waits (every one is being
    answered), the new one is refused. The lane's hand-overs are counted already
    (``adopt``)."""

    connections: Connections

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.waiting: dict[Any, None] = {}  # oldest first
        self.closing_tasks: set[asyncio.Future[None]] = set()

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if self.connections.full and not self.evict_waiting():
            self.connections.shedding("refused")
            stream.close()
            return
        self.adopt(stream, address)

    def adopt(self, stream: IOStream, address: Any) -> None:
        self.connections.open += 1
        super().handle_stream(stream, address)

    def evict_waiting(self) -> bool:
        """Close the connection that has waited longest for a request; False: none waits."""
        for server_conn in self.waiting:
            del self.waiting[server_conn]
            task = asyncio.ensure_future(server_conn.close())
            self.closing_tasks.add(task)
            task.add_done_callback(self.closing_tasks.discard)
            self.connections.shedding("evicted")
            return True
        return False

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        self.waiting[server_conn] = None
        delegate = super().start_request(server_conn, request_conn)
        return _RequestWatch(delegate, self.waiting, server_conn)

    def stop(self) -> None:
        super().stop()
        self.connections.stop()

    def on_close(self, server_conn: object) -> None:
        self.connections.open -= 1
        self.waiting.pop(server_conn, None)
        super().on_close(server_conn)


class _RequestWatch(httputil.HTTPMessageDelegate):
    """A request's delegate, taking its connection off the waiting list once the request
    has come whole (as Tornado's own ``_ProxyAdapter`` wraps a delegate)."""

    def __init__(
        self, delegate: httputil.HTTPMessageDelegate, waiting: dict[Any, None], conn: object
    ) -> None:
        self.delegate, self.waiting, self.conn = delegate, waiting, conn

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.waiting.pop(self.conn, None)
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.waiting.pop(self.conn, None)
        self.delegate.on_connection_close()


class HandedOverStream(IOStream):
    """A connection's stream that yields ``already_read`` before the socket's bytes.

    Its first read takes them all: its reads are at least that large. (Bytes left over
    would wait for the socket to be readable again, which it need not be.)"""

    def __init__(
        self, sock: Any, already_read: bytes, read_chunk_size: int | None = None, **kwargs: Any
    ) -> None:
        chunk = max(read_chunk_size or DEFAULT_CHUNK, len(already_read))
        super().__init__(sock, read_chunk_size=chunk, **kwargs)
        self.already_read = memoryview(already_read)

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        pending = self.already_read
        if not pending:
            return super().read_from_fd(buf)
        n = min(len(buf), len(pending))
        buf[:n] = pending[:n]
        self.already_read = pending[n:]
        return n
