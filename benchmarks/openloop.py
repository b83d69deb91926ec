"""An open-loop HTTP load generator: fixed arrival rate, latency from the intended send time.

Request ``i`` is due at ``t0 + i / rate`` whatever happened to the ones before it. A pool of
keep-alive connections takes due requests in order; when every connection is busy, due
requests wait, and that wait counts in their latency, so a stalled server cannot hide its
queue (no coordinated omission: Gil Tene's point, which closed-loop tools like wrk and
Locust do not correct). Written here, in asyncio on uvloop, because wrk2 is not packaged
for this machine and crates.io is out of reach; it sends pre-built requests and parses only
the status line and Content-Length, so one core drives well past what the servers under test
take.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    rate: float  # offered, requests per second
    sent: int
    latencies: list[float] = field(default_factory=list)  # seconds, from the intended time
    statuses: dict[int, int] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float | int]:
        return {
            "offered_rate": self.rate,
            "achieved_rate": round(len(self.latencies) / self.elapsed, 1) if self.elapsed else 0,
            "requests": self.sent,
            "completed": len(self.latencies),
            "errors": self.errors,
            "p50_ms": round(self.quantile(0.50) * 1000, 3),
            "p90_ms": round(self.quantile(0.90) * 1000, 3),
            "p99_ms": round(self.quantile(0.99) * 1000, 3),
            "max_ms": round(max(self.latencies) * 1000, 3) if self.latencies else float("nan"),
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    location = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"location":
            location = value.strip().decode()
    if length:
        await reader.readexactly(length)
    return status, location


async def run(
    host: str,
    port: int,
    requests: list[bytes],
    rate: float,
    seconds: float,
    connections: int = 64,
    keep_locations: bool = False,
) -> Result:
    """Send ``rate * seconds`` of ``requests`` (in order) at ``rate`` per second."""
    n = min(len(requests), int(rate * seconds))
    result = Result(rate=rate, sent=n)
    queue: asyncio.Queue[int] = asyncio.Queue()
    clock = time.perf_counter  # the loop's clock is only millisecond-grained under uvloop
    t0 = clock() + 0.05
    done = asyncio.Event()
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                i = await queue.get()
                if i < 0:
                    return
                due = t0 + i / rate
                try:
                    writer.write(requests[i])
                    status, location = await _read_response(reader)
                    result.latencies.append(clock() - due)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if keep_locations:
                        result.locations.append(location)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                remaining -= 1
                if remaining == 0:
                    done.set()
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    started = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(i)
    if n:
        try:
            await asyncio.wait_for(done.wait(), timeout=seconds + 60)
        except TimeoutError:
            result.errors += remaining
    result.elapsed = time.perf_counter() - started
    for _ in workers:
        queue.put_nowait(-1)
    await asyncio.gather(*workers, return_exceptions=True)
    return result


def form_request(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
