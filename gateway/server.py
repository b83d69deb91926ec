"""``gateway serve`` and ``gateway worker``: open the stores, run, stop cleanly on SIGTERM.

With ``--workers N`` a supervisor forks N processes; each binds its own SO_REUSEPORT socket
so the kernel spreads connections, and a crashed worker is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import resource
import select
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from gateway.app import listen, make_app, open_stores
from gateway.background import consumer_name, loop_lag, monitor, writebehind
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.metrics import Metrics
from gateway.ports import bind
from handlers.ops import SANDBOX_WARNING
from store.queue import QueueStats

log = logging.getLogger("gateway.server")
DRAIN_TIMEOUT_S = 10.0
EXIT_REFUSED = 2  # a child's status when it cannot start for a reason a restart keeps


async def serve(
    settings: Settings, host: str, port: int, slot: int = 0, writebehind_here: bool = True
) -> None:
    """Run one gateway process until SIGTERM or SIGINT, then drain and close.
    ``writebehind_here``: run a write-behind worker in this process too."""
    async with open_stores(settings) as (store, pg):
        metrics = Metrics()
        app = make_app(settings, store, metrics, pg=pg)
        ctx = app.settings["ctx"]
        ctx.redis_durability = await store.durability()
        if ctx.redis_durability != "aof-always":
            log.warning(
                "redis persistence is weaker than appendonly yes + appendfsync always: an "
                "acknowledged payment can be lost if Redis dies before PostgreSQL holds it",
                extra={"redis_durability": ctx.redis_durability},
            )
        descriptors = raise_descriptor_limit()
        sockets = bind(host, port)
        freeze_startup_objects()
        server = await listen(app, sockets, max_body_size=1024 * 1024)
        stop = asyncio.Event()
        background = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def publish(stats: QueueStats) -> None:
            ctx.queue = stats

        tasks = [
            asyncio.create_task(monitor(settings, store, metrics, publish, background)),
            asyncio.create_task(loop_lag(metrics, background)),
        ]
        if writebehind_here:
            worker = writebehind(settings, store, pg, metrics, consumer_name("serve", slot))
            tasks.append(asyncio.create_task(worker.run(background)))
        if settings.sandbox:
            log.warning(SANDBOX_WARNING)
        log.info(
            "gateway listening",
            extra={
                "host": host,
                "port": port,
                "pid": os.getpid(),
                "providers": sorted(ctx.checkout.providers),
                "sandbox": settings.sandbox,
                "writebehind_in_process": writebehind_here,
                "descriptor_limit": descriptors,
                "max_connections": server.connections.cap,
            },
        )
        await stop.wait()
        log.info("shutting down: no new connections, finishing requests in flight")
        ctx.draining = True
        server.stop()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while ctx.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await server.close_all_connections()
        background.set()  # the worker finishes the batch in hand, then returns
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                log.error("background task failed", exc_info=task.exception())
        log.info("stopped", extra={"unfinished": ctx.in_flight})


def raise_descriptor_limit() -> int:
    """Raise the process's soft limit on open descriptors to its hard limit (a connection
    is a descriptor: 1,024, a common default, is 1,024 slow clients); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning(
                "could not raise the descriptor limit",
                extra={"soft": soft, "hard": hard, "error": str(exc)},
            )
    return soft


def freeze_startup_objects() -> None:
    """Move everything made at start (modules, the app, the OpenAPI document) out of the
    garbage collector's sight: a full collection over it took ~15 ms, most of the 18 ms
    objective, each time it ran under load (decision 27)."""
    gc.collect()
    gc.freeze()


def run(settings: Settings, host: str, port: int, workers: int) -> int:
    """``gateway serve``: one process (the write-behind in it), or a supervisor of
    ``workers`` serving processes and, beside them, one write-behind process at
    ``GATEWAY_WB_NICE`` (decision 30: in the serving processes, each batch stalled the
    returns queued behind it)."""
    wb = settings.writebehind_in_process
    if workers <= 1:
        uvloop.run(serve(settings, host, port, 0, writebehind_here=wb))
        return 0

    def writebehind_process() -> Coroutine[Any, Any, None]:
        os.nice(settings.writebehind_nice)  # the serving processes come first for the CPU
        return work(settings, 0, f"{socket.gethostname()}-writebehind")

    return _supervise(
        workers,
        lambda slot: serve(settings, host, port, slot, writebehind_here=False),
        writebehind_process if wb else None,
    )


def run_processes(workers: int, main: Callable[[int], Coroutine[Any, Any, None]]) -> int:
    """Run ``main(0)`` here, or fork ``workers`` processes running ``main(slot)``."""
    if workers <= 1:
        uvloop.run(main(0))
        return 0
    return _supervise(workers, main)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by SIGKILL, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the supervisor's SIGTERM forwarding still applies


def _supervise(
    workers: int,
    main: Callable[[int], Coroutine[Any, Any, None]],
    extra: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Fork ``main(slot)`` for slots 0..workers-1, and ``extra()`` as slot ``workers`` when
    given; restart any that dies; forward SIGTERM and SIGINT to all. A child that cannot
    start for a reason a restart does not change (``ConfigError``: its port, its Redis
    database) stops them all at once: that reason is raised, as ``ConfigError``, once every
    child has stopped."""
    children: dict[int, int] = {}
    stopping = False
    refused: str | None = None
    # children write why they could not start here (one short line each: an atomic write)
    reasons, reason_out = os.pipe()
    os.set_blocking(reasons, False)

    def target(slot: int) -> Coroutine[Any, Any, None]:
        return extra() if extra is not None and slot == workers else main(slot)

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                uvloop.run(target(slot))
            except ConfigError as exc:
                os.write(reason_out, str(exc).encode()[: select.PIPE_BUF - 1] + b"\n")
                code = EXIT_REFUSED
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(workers + (1 if extra is not None else 0)):
        spawn(slot)
    restarts: list[float] = []
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            # its live gauges go; its counters stay
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        exit_code = os.waitstatus_to_exitcode(code)
        # a child that the SIGTERM we forwarded ended before its handler was in place
        # (still starting) stopped cleanly too
        if exit_code != 0 and not (stopping and exit_code == -signal.SIGTERM):
            status = 1
        if exit_code == EXIT_REFUSED and refused is None:
            try:
                refused = os.read(reasons, 4096).decode(errors="replace").split("\n")[0]
            except BlockingIOError:
                refused = "a process could not start"
            log.error("a process could not start; stopping", extra={"pid": pid, "slot": slot})
            forward(signal.SIGTERM, None)
            continue
        if not stopping:
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5 * workers:
                log.error("workers keep dying; giving up")
                forward(signal.SIGTERM, None)
                continue
            log.warning("worker exited, starting another", extra={"pid": pid, "slot": slot})
            spawn(slot)
    os.close(reasons)
    os.close(reason_out)
    if refused is not None:
        raise ConfigError(refused)
    return status


async def work(
    settings: Settings, slot: int, name: str | None = None, metrics_port: int = 0
) -> None:
    """A standalone write-behind worker, until SIGTERM or SIGINT.

    With ``metrics_port``, process ``slot`` serves its metrics on ``metrics_port + slot``
    (one scrape target per worker process)."""
    async with open_stores(settings) as (store, pg):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        consumer = f"{name}-{slot}" if name else consumer_name("worker", slot)
        freeze_startup_objects()
        metrics = Metrics()
        pg.observe = metrics.postgres_call
        tasks = []
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port + slot, settings.host, registry=metrics.registry)

            def publish(stats: QueueStats) -> None:
                pass

            tasks.append(asyncio.create_task(monitor(settings, store, metrics, publish, stop)))
        await writebehind(settings, store, pg, metrics, consumer).run(stop)
        await asyncio.gather(*tasks)
