"""The report's tables, as text for the console, GitHub Markdown or HTML (tabulate).

:func:`throughput_table` renders one workload (rows: servers, columns: concurrency,
best marked); :func:`latency_table` one percentile the same way; :func:`cost_table`
the per-request costs that explain the differences (CPU us, system calls and context
switches per request) at one concurrency; :func:`ranking_table` the ranking
(bench.aggregate); :func:`capacity_table` the capacity searches (``--slo``). The
``fmt_*`` helpers shorten figures the same way in every table.
"""

from __future__ import annotations

import math
from typing import Any

from tabulate import tabulate

from bench.aggregate import best_by_column, concurrencies_of, servers_of
from bench.records import FAILED, NOT_RUN, Result, Status

LEGEND = ("* best in column, or tied with the best (95% intervals overlap)   ! errors counted"
          "   c client-bound (load generator's core saturated: a floor, not the server's "
          "limit)   x unclean exit   u unstable (halves differ or busy neighbours, after one "
          "rerun)   ~ interval not within --ci   ±: half the 95% confidence interval over "
          "the repeats, as a % of the median (none with one repeat)")
MD_LEGEND = LEGEND.replace("* best in column", "**bold**: best in column").replace(
    "   ", "; ")
FAILED_TEXT = {Status.FAILED: "FAIL", Status.TIMEOUT: "TIMEOUT", Status.SKIPPED: "skip",
               Status.NA: "n/a"}


# (from, divide by, digits, unit): the first row a value reaches shortens it
RATE_UNITS = ((1e6, 1e6, 2, "M"), (1e4, 1e3, 1, "k"), (1e3, 1e3, 2, "k"), (-math.inf, 1, 0, ""))
TIME_UNITS = ((1e6, 1e6, 2, "s"), (1e3, 1e3, 1, "ms"), (-math.inf, 1, 0, "us"))


def _shortened(value: float | None, units: tuple[tuple[float, float, int, str], ...]) -> str:
    if value is None:
        return "-"
    floor, divisor, digits, unit = next(row for row in units if value >= row[0])
    return f"{value / divisor:.{digits}f}{unit}"


def fmt_rate(value: float | None) -> str:
    """12345.6 -> '12.3k'."""
    return _shortened(value, RATE_UNITS)


def fmt_us(value: float | None) -> str:
    """Microseconds, shortened: 950 -> '950us', 12345 -> '12.3ms'."""
    return _shortened(value, TIME_UNITS)


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ci(result: Result, key: str) -> str:
    """' ±12%': half a figure's 95% interval as a share of it; '' without one."""
    iv = result.interval(key)
    if not iv or iv.get("half_pct") is None or not math.isfinite(iv["half_pct"]):
        return ""
    return f" ±{iv['half_pct']:.0f}%"


def cell_text(result: Result | None, best: bool, markdown: bool = False) -> str:
    """The table cell of one result: rate, spread and markers, or why there is none."""
    if result is None:
        return "n/a"
    status = result.status
    if status in FAILED:
        return FAILED_TEXT[Status(status)]
    text = fmt_rate(result.requests_per_s) + fmt_ci(result, "requests_per_s")
    marks = ""
    if result.errors_total or status in (Status.PARTIAL, Status.ERRORS):
        marks += "!"
    if result.client_bound:
        marks += "c"
    if status == Status.UNCLEAN:
        marks += "x"
    if result.unstable:
        marks += "u"
    if result.ci_converged is False:
        marks += "~"
    if best:
        text = f"**{text}**" if markdown else "*" + text
    return text + marks


def _index(results: list[Result]) -> dict[tuple[str, str, int], Result]:
    return {r.cell: r for r in results}


def throughput_table(results: list[Result], workload: str, fmt: str = "simple") -> str:
    """Requests/s of every server (rows) at every concurrency (columns), best marked."""
    index = _index(results)
    concs = concurrencies_of(results, workload)
    best = best_by_column(results, workload)
    markdown = fmt in ("github", "pipe")
    rows = []
    for server in servers_of(results):
        if not any((server, workload, c) in index for c in concs):
            continue
        rows.append([server] + [
            cell_text(index.get((server, workload, c)), server in best.get(c, ()), markdown)
            for c in concs])
    headers = ["server"] + [f"c={c}" for c in concs]
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def latency_table(results: list[Result], workload: str, key: str = "p99",
                  fmt: str = "simple") -> str:
    """One latency percentile of every server at every concurrency."""
    index = _index(results)
    concs = concurrencies_of(results, workload)
    rows = []
    for server in servers_of(results):
        row = [server]
        for c in concs:
            r = index.get((server, workload, c))
            if r is None:
                row.append("n/a")
            elif r.status in FAILED:
                row.append(cell_text(r, False))
            else:
                row.append(fmt_us(r.latency_us.get(key)) + fmt_ci(r, key))
        if len(row) > 1 and any(cell != "n/a" for cell in row[1:]):
            rows.append(row)
    return tabulate(rows, headers=["server"] + [f"c={c}" for c in concs], tablefmt=fmt,
                    stralign="right")


def app_of(workload: str) -> str:
    """"file", "guestbook" (both guestbook workloads, any wait) or "" for a label."""
    base = workload.partition("@")[0]
    return "guestbook" if base.startswith("guestbook") else base if base == "file" else ""


def _percent(value: float | None, cap: float | None = None) -> str:
    if value is None:
        return "-"
    return fmt_num(100 * value if cap is None else min(cap, 100 * value), 0)


def cost_table(results: list[Result], workload: str, concurrency: int,
               fmt: str = "simple") -> str:
    """Per-request costs at one concurrency, fastest first: why one server is faster.

    The file workload adds MB/s and server CPU per MB; the guestbook adds the
    Little's-law limit min(connections, requests the model has in flight) / W, with
    W the measured backend wait, and the share of it reached."""
    app = app_of(workload)
    rows = []
    chosen = [r for r in results if r.workload == workload and r.concurrency == concurrency
              and r.status not in NOT_RUN]  # those are in the throughput table and below
    chosen.sort(key=lambda r: -(r.requests_per_s or 0) if r.status not in FAILED else 1)
    for r in chosen:
        lat = r.latency_us
        rss, pss = r.server_rss_bytes, r.server_pss_bytes
        rows.append([
            r.server, fmt_rate(r.requests_per_s) + fmt_ci(r, "requests_per_s")
            if r.status not in FAILED else "-",
            fmt_us(lat.get("p50")) + fmt_ci(r, "p50"), fmt_us(lat.get("p99")) + fmt_ci(r, "p99"),
            fmt_num(r.cpu_us_per_req) + fmt_ci(r, "cpu_us_per_req"),
            fmt_num(r.syscalls_per_req, 2) + fmt_ci(r, "syscalls_per_req"),
            fmt_num(r.ctx_per_req, 3) + fmt_ci(r, "ctx_per_req"),
            _percent(r.server_cpu_util),
            fmt_num(None if rss is None else rss / 2**20, 1),
            fmt_num(None if pss is None else pss / 2**20, 1),
            _percent(r.foreign_cpu_util), _percent(r.client_core_busy, cap=100.0),
            "yes" if r.client_bound else "",
            r.status + (f": {r.reason[:40]}" if r.status != Status.OK and r.reason else ""),
        ])
        if app == "file":
            rows[-1][2:2] = [fmt_num(r.mb_per_s), fmt_num(r.cpu_us_per_mb, 0)]
        elif app == "guestbook":
            rows[-1][2:2] = [fmt_rate(r.littles_limit), _percent(r.littles_share)]
    headers = ["server", "req/s", "p50", "p99", "CPU us/req", "syscalls/req", "ctxsw/req",
               "srv CPU %", "RSS MiB", "PSS MiB", "others on srv core %", "lg core busy %",
               "client-bound", "status"]
    if app == "file":
        headers[2:2] = ["MB/s", "CPU us/MB"]
    elif app == "guestbook":
        headers[2:2] = ["Little limit", "% of limit"]
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def ranking_table(rank: list[dict[str, Any]], workloads: list[str], fmt: str = "simple") -> str:
    """The ranking of bench.aggregate.ranking, a column per workload."""
    rows = [[f"{r['rank']}=" if r.get("tied") else r["rank"], r["server"],
             f"{100 * r['score']:.0f}%", f"{r['wins']}/{r['cells']}"]
            + [f"{100 * r['per_workload'][w]:.0f}%" if w in r["per_workload"] else "-"
               for w in workloads] for r in rank]
    headers = ["#", "server", "score", "best in"] + workloads
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def capacity_table(capacity: list[dict[str, Any]], workload: str, fmt: str = "simple") -> str:
    """Capacity at the latency target of every server for one workload, highest first."""
    chosen = sorted((c for c in capacity if c["workload"] == workload),
                    key=lambda c: -(c["capacity_rps"] or 0))
    rows = []
    for c in chosen:
        low, high = c["bracket"]
        key = c["key"]
        at = next((p[key] for p in c["probes"] if c["feasible"]
                   and p["rate"] == c["capacity_rps"]), None)
        if c["feasible"]:
            bracket = f"{fmt_rate(low)}..{fmt_rate(high) if high else '?'}"
            verdict = "meets" + ("" if high else " at every rate tried")
        else:
            bracket = "-"
            verdict = (f"infeasible: lowest {key} seen {fmt_us(c.get('lowest'))}"
                       if c.get("lowest") is not None else f"infeasible: {c['reason'][:60]}")
        share = (100 * c["capacity_rps"] / c["peak_rps"]
                 if c["capacity_rps"] and c.get("peak_rps") else None)
        rows.append([c["server"], fmt_rate(c["capacity_rps"]), bracket, fmt_us(at),
                     fmt_rate(c.get("peak_rps")), fmt_num(share, 0),
                     len(c["probes"]), verdict])
    headers = ["server", "capacity req/s", "bracket", f"{chosen[0]['key'] if chosen else 'p99'}"
               " at capacity", "closed-loop peak", "% of peak", "runs", "verdict"]
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def capacity_heading(capacity: list[dict[str, Any]], workload: str) -> str:
    """The heading of one workload's capacity table: the target and the search."""
    c = next(c for c in capacity if c["workload"] == workload)
    return (f"{workload}: capacity at {c['key']} <= {fmt_us(c['target_us'])} (open loop, "
            f"{c.get('arrivals', 'poisson')} arrivals, {c['concurrency']} connections; "
            f"bracket then bisect to {100 * c.get('resolution_asked', 0.1):.0f}%)")
