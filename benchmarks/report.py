"""The sweep's report: the plot, the summary tables, and the sweep section of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TARGET_MS = 18.0
ROOT = Path(__file__).resolve().parent.parent


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r, color in zip(
        results, ("tab:blue", "tab:gray", "tab:purple", "tab:red", "tab:green"), strict=False
    ):
        rates = [p["offered_rate"] for p in r["points"]]
        ax.plot(
            rates, [p["p99_ms"] for p in r["points"]], "o-", color=color, label=f"{r['system']} p99"
        )
        ax.plot(
            rates,
            [p["p50_ms"] for p in r["points"]],
            "o--",
            color=color,
            alpha=0.6,
            label=f"{r['system']} p50",
        )
    ax.axhline(TARGET_MS, color="black", linestyle=":", label="18 ms objective")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (returns per second, open loop)")
    ax.set_ylabel("latency from intended send time (ms)")
    ax.set_title("Return endpoint: latency against offered rate (2 processes each)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def capped(r: dict[str, Any], top: int) -> bool:
    """The system held the sweep's top rate: its own ceiling lies beyond it."""
    return bool(r["points"]) and r["max_rate_within_18ms"] == top


def rate_text(r: dict[str, Any], top: int) -> str:
    return f"≥ {top}/s (the sweep's top)" if capped(r, top) else f"{r['max_rate_within_18ms']}/s"


def summary_table(results: list[dict[str, Any]]) -> str:
    by = {r.get("key", r["system"].split()[0].lower()): r for r in results}
    gw, bare, sync = by["gateway"], by["bare"], by["synchronous"]
    lines = [
        "| system | largest rate with p99 ≤ 18 ms | p99 there | every point held up to | "
        "CPU µs per request there (the system's processes) | reported runs still over the "
        "steal limit / runs retried for steal |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    top = max((p["offered_rate"] for r in results for p in r["points"]), default=0)
    for r in results:
        at = next((p for p in r["points"] if p["offered_rate"] == r["max_rate_within_18ms"]), None)
        lines.append(
            f"| {r['system']} | {rate_text(r, top)} | "
            f"{at['p99_ms'] if at else '-'} ms | {r['sustained_rate_within_18ms']}/s | "
            f"{at['cpu_us_per_request'] if at else '-'} | "
            f"{sum(p['disturbed'] for p in r['points'])} / {len(r['disturbed_runs'])} |"
        )
    g, b, s = (r["max_rate_within_18ms"] for r in (gw, bare, sync))
    gs, bs, ss = (r["sustained_rate_within_18ms"] for r in (gw, bare, sync))
    # a baseline that held the top rate was not measured to its ceiling: the ratio against
    # it is an upper bound
    most = " at most" if capped(bare, top) else ""
    lines += [
        "",
        f"Largest rates: gateway / bare Tornado{most} **{ratio(g, b)}** (target ≥ 0.5), "
        f"gateway / synchronous **{ratio(g, s)}** (target ≥ 5). "
        f"Every-point-held rates: **{ratio(gs, bs)}** and **{ratio(gs, ss)}**.",
    ]
    if "protocol" in by:
        p, ps = by["protocol"]["max_rate_within_18ms"], by["protocol"]["sustained_rate_within_18ms"]
        pmost = " at most" if capped(by["protocol"], top) else ""
        lines.append(
            f"Against the ceiling of the connections the gateway's return runs on since "
            f"decision 38 (a bare asyncio protocol answering the same 303): gateway / bare "
            f"protocol{pmost} **{ratio(g, p)}** (every point held: {ratio(gs, ps)})."
        )
    if "hotpath" in by:
        h, hs = by["hotpath"]["max_rate_within_18ms"], by["hotpath"]["sustained_rate_within_18ms"]
        lines.append(
            f"The hot path alone (the prototype: hash check, one Lua script, 303) / bare "
            f"Tornado: **{ratio(h, b)}** (every point held: {ratio(hs, bs)}); the gateway / the "
            f"hot path: **{ratio(g, h)}**."
        )
    return "\n".join(lines)


def extras_table(extras: dict[str, Any], results: list[dict[str, Any]]) -> str:
    d, m, mem = extras["writebehind_drain"], extras["metrics_us_per_return"], extras["redis_memory"]
    gw_rate = results[0]["max_rate_within_18ms"] or results[0]["points"][0]["offered_rate"]
    rss = ", ".join(f"{x} MB" for x in extras["gateway_rss_mb_per_process"])
    return "\n".join(
        [
            "| figure | value |",
            "| --- | ---: |",
            f"| write-behind drain rate (one worker, batch 500; median of "
            f"{len(d.get('runs_events_per_s', [0]))}) | {d['events_per_s']:,} events/s "
            f"({d['cpu_ms_per_1000_events']} ms CPU per 1,000 events) |",
            f"| drain rate / the gateway's largest rate within 18 ms (1 event per return) | "
            f"{d['events_per_s'] / gw_rate:.1f} times |",
            f"| gateway CPU per return at that rate (its processes, write-behind included) | "
            f"{extras['gateway_cpu_us_per_return']} µs |",
            f"| gateway resident memory per process (supervisor first) | {rss} |",
            f"| Redis memory per open cart (2 services) | {mem['bytes_per_open_cart']} B |",
            f"| Redis memory per completed booking (cart, payment, booking, events) | "
            f"{mem['bytes_per_completed_booking_with_events']} B |",
            f"| metrics work per return, single process / multiprocess | "
            f"{m['single-process']} / {m['multiprocess']} µs |",
        ]
    )


def update_docs(out_dir: Path, table: str, args: argparse.Namespace, method: str) -> None:
    """Replace the sweep section of docs/benchmarks.md (``method``: how the runs were made)."""
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    start, end = "<!-- sweep:start -->", "<!-- sweep:end -->"
    section = (
        f"{start}\n## Open-loop rate sweep of the return endpoint ({out_dir.name})\n\n"
        f"`make bench` (`PYTHONPATH=. .venv/bin/python -m benchmarks --seconds {args.seconds:g} "
        f"--repeats {args.repeats}`"
        f"; {args.processes} processes per system; raw numbers, CSV and plot in "
        f"`benchmarks/results/{out_dir.name}/`). {method}\n\n"
        f"{table}\n\n![latency against offered rate](../benchmarks/results/{out_dir.name}/"
        f"latency.png)\n{end}"
    )
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
