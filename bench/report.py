"""Turn run records into results: aggregates, tables, a ranking, files and plots.

* :func:`aggregate` folds the repeats of one (server, workload, concurrency)
  into one result: the median requests/s with its spread (min, max, and the
  half-range as a percentage of the median), the median of each latency
  percentile (max: the largest seen), errors summed, the median per-request
  costs, the peak RSS, and a status that keeps the worst failure's reason.
  Each median figure gets a 95% confidence interval over its repeats
  (``ci``: :mod:`bench.stats`); the tables show it as ``±``, and "best" marks
  and the ranking count only differences whose intervals do not overlap.
* :func:`throughput_table` renders one workload (rows: servers, columns:
  concurrency, best marked); :func:`cost_table` the per-request costs that
  explain the differences (CPU us, system calls and context switches per
  request); :func:`ranking` orders the servers.
* :func:`write_outputs` writes results.json, results.csv, summary.md and the
  plots (matplotlib, Agg backend) into the output directory.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

from bench import stats

LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
FAILED = ("failed", "timeout", "skipped", "n/a")
NOT_RUN = ("skipped", "n/a")  # the server cannot run here, or cannot serve the workload
STATUS_ORDER = ("n/a", "skipped", "failed", "timeout", "unclean-exit", "errors", "ok")
LEGEND = ("* best in column, or tied with the best (95% intervals overlap)   ! errors counted"
          "   c client-bound (load generator's core saturated: a floor, not the server's "
          "limit)   x unclean exit   u unstable (halves differ or busy neighbours, after one "
          "rerun)   ~ interval not within --ci   ±: half the 95% confidence interval over "
          "the repeats, as a % of the median (none with one repeat)")
CI_KEYS = ("requests_per_s", "p50", "p90", "p99", "p999", "cpu_us_per_req",
           "syscalls_per_req", "ctx_per_req", "mb_per_s")

MD_LEGEND = LEGEND.replace("* best in column", "**bold**: best in column").replace(
    "   ", "; ")


def _value_of(run: dict[str, Any], key: str) -> float | None:
    if key in LATENCY_KEYS:
        return (run.get("latency_us") or {}).get(key)
    return run.get(key)


def _median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return float(statistics.median(data)) if data else None


def aggregate(runs: list[dict[str, Any]], ci_target: float | None = None,
              ) -> list[dict[str, Any]]:
    """One result per (server, workload, concurrency), in first-seen order.

    ``ci_target`` (percent): the repeats were added until each interval was within
    it (``--ci``): the intervals are widened for that stop (:mod:`bench.stats`) and a
    cell whose requests/s interval is wider is marked not converged."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["server"], run["workload"], run["concurrency"]), []).append(run)
    return [_fold(key, group, ci_target) for key, group in groups.items()]


def _fold(key: tuple[str, str, int], group: list[dict[str, Any]],
          ci_target: float | None = None) -> dict[str, Any]:
    server, workload, concurrency = key
    # medians over the repeats that did not fail (a failed repeat is the status's business)
    measured = [r for r in group
                if r.get("requests_per_s") is not None and r["status"] not in FAILED]
    worst = min(group, key=lambda r: STATUS_ORDER.index(r["status"]))
    status = worst["status"]
    if measured and status in FAILED:
        status = "partial"
    reasons = []
    for run in group:
        if run.get("reason") and run["reason"] not in reasons:
            reasons.append(run["reason"])
    rps = [r["requests_per_s"] for r in measured]
    med = _median(rps)
    spread = None
    if med and len(rps) > 1:
        spread = (max(rps) - min(rps)) / 2 / med * 100
    errors: dict[str, int] = {}
    for run in group:
        for kind, count in (run.get("errors") or {}).items():
            errors[kind] = errors.get(kind, 0) + int(count or 0)
    latency = {k: _median(r["latency_us"].get(k) for r in measured) for k in LATENCY_KEYS}
    maxes = [r["latency_us"].get("max") for r in measured if r["latency_us"].get("max")]
    latency["max"] = max(maxes) if maxes else None
    util = _median(r.get("client_cpu_util") for r in measured)
    rss = [r["server_rss_bytes"] for r in measured if r.get("server_rss_bytes")]
    pss = [r["server_pss_bytes"] for r in measured if r.get("server_pss_bytes")]
    result = {
        "server": server, "workload": workload, "concurrency": concurrency,
        "status": status, "reason": "; ".join(reasons)[:500],
        "repeats": len(group), "measured_repeats": len(measured),
        "requests_per_s": med,
        "requests_per_s_min": min(rps) if rps else None,
        "requests_per_s_max": max(rps) if rps else None,
        "spread_pct": spread,
        "latency_us": latency,
        "errors": errors, "errors_total": sum(errors.values()),
        "server_cpu_s": _median(r.get("server_cpu_s") for r in measured),
        "server_cpu_util": _median(r.get("server_cpu_util") for r in measured),
        "server_cpu_s_per_10k": _median(r.get("server_cpu_s_per_10k") for r in measured),
        "cpu_us_per_req": _median(r.get("cpu_us_per_req") for r in measured),
        "syscalls_per_req": _median(r.get("syscalls_per_req") for r in measured),
        "ctx_per_req": _median(r.get("ctx_per_req") for r in measured),
        "ctx_voluntary": _median(r.get("ctx_voluntary") for r in measured),
        "ctx_involuntary": _median(r.get("ctx_involuntary") for r in measured),
        "server_rss_bytes": max(rss) if rss else None,
        "server_pss_bytes": max(pss) if pss else None,
        "client_cpu_util": util,
        "foreign_cpu_util": _median(r.get("foreign_cpu_util") for r in measured),
        "client_core_busy": _median(r.get("client_core_busy") for r in measured),
        "client_bound": bool(util is not None and util >= 0.9),
        "mb_per_s": _median(r.get("mb_per_s") for r in measured),
        "cpu_us_per_mb": _median(r.get("cpu_us_per_mb") for r in measured),
        "backend_wait_ms": group[0].get("backend_wait_ms"),
        "backend_wait_measured_ms": group[0].get("backend_wait_measured_ms"),
        "littles_limit": group[0].get("littles_limit"),
        "littles_share": _median(r.get("littles_share") for r in measured),
        "server_exit": sorted({str(r.get("server_exit")) for r in group}),
        "samples": group,
    }
    sequential = ci_target is not None
    result["ci"] = {}
    for name in CI_KEYS:
        iv = stats.interval([_value_of(r, name) for r in measured], sequential)
        result["ci"][name] = iv.as_dict() if iv else None
    rate_ci = result["ci"]["requests_per_s"]
    result["ci_pct"] = rate_ci["half_pct"] if rate_ci else None
    result["ci_converged"] = (None if ci_target is None
                              else bool(rate_ci and rate_ci["half_pct"] <= ci_target))
    result["unstable"] = "; ".join(dict.fromkeys(
        r["unstable"] for r in measured if r.get("unstable")))
    return result


# -- formatting --------------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    """12345.6 -> '12.3k'."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 1e3:
        return f"{value / 1e3:.2f}k"
    return f"{value:.0f}"


def fmt_us(value: float | None) -> str:
    """Microseconds, shortened: 950 -> '950us', 12345 -> '12.3ms'."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}s"
    if value >= 1e3:
        return f"{value / 1e3:.1f}ms"
    return f"{value:.0f}us"


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _usable(result: dict[str, Any]) -> bool:
    """A result that may be compared: measured, no errors, no failure."""
    return result["status"] in ("ok", "unclean-exit") and result["requests_per_s"] is not None


def _index(results: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["server"], r["workload"], r["concurrency"]): r for r in results}


def _order(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def workloads_of(results: list[dict[str, Any]]) -> list[str]:
    return _order(r["workload"] for r in results)


def servers_of(results: list[dict[str, Any]]) -> list[str]:
    return _order(r["server"] for r in results)


def concurrencies_of(results: list[dict[str, Any]], workload: str | None = None) -> list[int]:
    return sorted({r["concurrency"] for r in results if workload in (None, r["workload"])})


def cell_text(result: dict[str, Any] | None, best: bool, markdown: bool = False) -> str:
    """The table cell of one result: rate, spread and markers, or why there is none."""
    if result is None:
        return "n/a"
    status = result["status"]
    if status in FAILED:
        return {"failed": "FAIL", "timeout": "TIMEOUT", "skipped": "skip", "n/a": "n/a"}[status]
    text = fmt_rate(result["requests_per_s"]) + fmt_ci(result, "requests_per_s")
    marks = ""
    if result["errors_total"] or status in ("partial", "errors"):
        marks += "!"
    if result["client_bound"]:
        marks += "c"
    if status == "unclean-exit":
        marks += "x"
    if result.get("unstable"):
        marks += "u"
    if result.get("ci_converged") is False:
        marks += "~"
    if best:
        text = f"**{text}**" if markdown else "*" + text
    return text + marks


def fmt_ci(result: dict[str, Any], key: str) -> str:
    """' ±12%': half a figure's 95% interval as a share of it; '' without one."""
    iv = (result.get("ci") or {}).get(key)
    if not iv or iv.get("half_pct") is None or not math.isfinite(iv["half_pct"]):
        return ""
    return f" ±{iv['half_pct']:.0f}%"


def _rate_ci(result: dict[str, Any]) -> dict[str, Any] | None:
    return (result.get("ci") or {}).get("requests_per_s")


def tied_with(top: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two results' requests/s are a tie under the one rule (bench.stats)."""
    return not stats.differs(top["requests_per_s"], _rate_ci(top), other["requests_per_s"],
                             _rate_ci(other))


def best_by_column(results: list[dict[str, Any]], workload: str) -> dict[int, set[str]]:
    """For each concurrency the servers with the highest usable requests/s: the top
    one and every one whose interval overlaps it (tied)."""
    top: dict[int, dict[str, Any]] = {}
    for r in results:
        if r["workload"] != workload or not _usable(r):
            continue
        c = r["concurrency"]
        if c not in top or r["requests_per_s"] > top[c]["requests_per_s"]:
            top[c] = r
    best: dict[int, set[str]] = {c: set() for c in top}
    for r in results:
        if r["workload"] == workload and _usable(r) and r["concurrency"] in top:
            if r is top[r["concurrency"]] or tied_with(top[r["concurrency"]], r):
                best[r["concurrency"]].add(r["server"])
    return best


def throughput_table(results: list[dict[str, Any]], workload: str, fmt: str = "simple") -> str:
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


def latency_table(results: list[dict[str, Any]], workload: str, key: str = "p99",
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
            elif r["status"] in FAILED:
                row.append(cell_text(r, False))
            else:
                row.append(fmt_us(r["latency_us"].get(key)) + fmt_ci(r, key))
        if len(row) > 1 and any(cell != "n/a" for cell in row[1:]):
            rows.append(row)
    return tabulate(rows, headers=["server"] + [f"c={c}" for c in concs], tablefmt=fmt,
                    stralign="right")


def cost_table(results: list[dict[str, Any]], workload: str, concurrency: int,
               fmt: str = "simple") -> str:
    """Per-request costs at one concurrency, fastest first: why one server is faster.

    The file workload adds MB/s and server CPU per MB; the guestbook adds the
    Little's-law limit min(connections, requests the model has in flight) / W, with
    W the measured backend wait, and the share of it reached."""
    app = app_of(workload)
    rows = []
    chosen = [r for r in results if r["workload"] == workload and r["concurrency"] == concurrency
              and r["status"] not in NOT_RUN]  # those are in the throughput table and below
    chosen.sort(key=lambda r: -(r["requests_per_s"] or 0) if r["status"] not in FAILED else 1)
    for r in chosen:
        lat = r["latency_us"]
        rss, pss = r["server_rss_bytes"], r.get("server_pss_bytes")
        rows.append([
            r["server"], fmt_rate(r["requests_per_s"]) + fmt_ci(r, "requests_per_s")
            if r["status"] not in FAILED else "-",
            fmt_us(lat.get("p50")) + fmt_ci(r, "p50"), fmt_us(lat.get("p99")) + fmt_ci(r, "p99"),
            fmt_num(r["cpu_us_per_req"]) + fmt_ci(r, "cpu_us_per_req"),
            fmt_num(r["syscalls_per_req"], 2) + fmt_ci(r, "syscalls_per_req"),
            fmt_num(r["ctx_per_req"], 3) + fmt_ci(r, "ctx_per_req"),
            fmt_num(None if r["server_cpu_util"] is None else 100 * r["server_cpu_util"], 0),
            fmt_num(None if rss is None else rss / 2**20, 1),
            fmt_num(None if pss is None else pss / 2**20, 1),
            fmt_num(None if r.get("foreign_cpu_util") is None
                    else 100 * r["foreign_cpu_util"], 0),
            fmt_num(None if r.get("client_core_busy") is None
                    else min(100.0, 100 * r["client_core_busy"]), 0),
            "yes" if r["client_bound"] else "",
            r["status"] + (f": {r['reason'][:40]}" if r["status"] != "ok" and r["reason"] else ""),
        ])
        if app == "file":
            rows[-1][2:2] = [fmt_num(r.get("mb_per_s")), fmt_num(r.get("cpu_us_per_mb"), 0)]
        elif app == "guestbook":
            limit, share = r.get("littles_limit"), r.get("littles_share")
            rows[-1][2:2] = [fmt_rate(limit),
                             fmt_num(None if share is None else 100 * share, 0)]
    headers = ["server", "req/s", "p50", "p99", "CPU us/req", "syscalls/req", "ctxsw/req",
               "srv CPU %", "RSS MiB", "PSS MiB", "others on srv core %", "lg core busy %",
               "client-bound", "status"]
    if app == "file":
        headers[2:2] = ["MB/s", "CPU us/MB"]
    elif app == "guestbook":
        headers[2:2] = ["Little limit", "% of limit"]
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def app_of(workload: str) -> str:
    """"file", "guestbook" (both guestbook workloads, any wait) or "" for a label."""
    base = workload.partition("@")[0]
    return "guestbook" if base.startswith("guestbook") else base if base == "file" else ""


def diagnose(results: list[dict[str, Any]], workload: str, concurrency: int) -> list[str]:
    """One line per server saying where it loses against the fastest, from its costs.

    The fastest usable server is the yardstick; a server is said to spend more
    CPU, system calls or context switches per request when it spends at least
    1.5x as much, and to wait rather than compute when its core was less than 70%
    busy (one client at a time, a blocking hand-off, a stall).
    """
    chosen = [r for r in results if r["workload"] == workload and r["concurrency"] == concurrency
              and r["requests_per_s"] is not None and r["status"] not in FAILED]
    chosen.sort(key=lambda r: -r["requests_per_s"])
    if not chosen:
        return []
    best = next((r for r in chosen if _usable(r)), chosen[0])
    lines = []
    for r in chosen:
        notes = []
        ratio = best["requests_per_s"] / r["requests_per_s"]
        if r is not best:
            notes.append(f"{ratio:.1f}x slower than {best['server']}" if ratio >= 1.1 else
                         f"within 10% of {best['server']}")
        for key, what, floor in (("cpu_us_per_req", "CPU per request", 0.0),
                                 ("syscalls_per_req", "system calls per request", 0.05),
                                 ("ctx_per_req", "context switches per request", 0.05)):
            mine, theirs = r.get(key), best.get(key)
            if r is best or mine is None or theirs is None or mine < floor:
                continue
            if mine >= 1.5 * max(theirs, floor):
                notes.append(f"{mine / max(theirs, 1e-9):.1f}x the {what} "
                             f"({mine:.3g} vs {theirs:.3g})" if theirs >= floor / 5 else
                             f"{mine:.2g} {what} ({best['server']}: {theirs:.2g})")
        # busy share implied by the medians of cost and rate (one consistent pair)
        util = (r["cpu_us_per_req"] * r["requests_per_s"] / 1e6
                if r.get("cpu_us_per_req") is not None else r.get("server_cpu_util"))
        foreign = r.get("foreign_cpu_util")
        if foreign is not None and foreign >= 0.2:
            notes.append(f"other processes took {100 * foreign:.0f}% of its core (noise)")
        elif util is not None and util < 0.7 and not r["client_bound"]:
            notes.append(f"its core only {100 * util:.0f}% busy: it waits rather than computes")
        if r is best:
            bits = [f"{r['cpu_us_per_req']:.1f} us CPU" if r.get("cpu_us_per_req") else "",
                    f"{r['syscalls_per_req']:.2f} system calls" if r.get("syscalls_per_req")
                    is not None else "",
                    f"{r['ctx_per_req']:.3f} context switches" if r.get("ctx_per_req")
                    is not None else ""]
            costs = ", ".join(b for b in bits if b)
            notes.insert(0, f"fastest: {costs} per request" if costs else "fastest")
        share = r.get("littles_share")
        if share is not None:
            notes.append(_littles_reading(r, share, util))
        if r["client_bound"]:
            notes.append("client-bound: the figure is a floor")
        elif (r.get("client_core_busy") or 0) >= 0.9 and (r.get("client_cpu_util") or 0) < 0.7:
            notes.append("load generator's core busy with other work")
        if r["errors_total"]:
            notes.append(f"{r['errors_total']} errors")
        lines.append(f"{r['server']}: " + "; ".join(notes or ["on a par with the fastest"]))
    return lines


def _littles_reading(r: dict[str, Any], share: float, util: float | None) -> str:
    """What capped a guestbook server, read from its share of the Little's-law limit."""
    limit = fmt_rate(r.get("littles_limit"))
    if share >= 0.8:
        return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): the backend "
                "wait caps it")
    if util is not None and util >= 0.85:
        return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): its core is "
                f"{100 * util:.0f}% busy, so the GIL or the event loop caps it, not Redis")
    if r.get("client_bound"):
        return f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): client-bound"
    return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s) with its core "
            f"{100 * (util or 0):.0f}% busy: it waits on something else (its workers or "
            f"Redis connections, or Redis itself)")


def reference_concurrency(results: list[dict[str, Any]], workload: str) -> int | None:
    """The concurrency the cost table uses: 100 when measured, else the largest."""
    concs = concurrencies_of(results, workload)
    if not concs:
        return None
    return 100 if 100 in concs else concs[-1]


def ranking(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Servers ordered by score: the mean over all cells of req/s relative to the best.

    A failed cell, or one with errors, scores 0, so a server that only looks fast
    because it dropped clients does not win. A cell tied with the best (intervals
    overlap) scores 1 and counts as a win. The score has an interval too (the mean of
    each cell's interval bounds over the best's median), and servers whose score
    intervals overlap share a rank: a server's rank is one more than the number of
    servers whose score interval lies wholly above its own.
    """
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        key = (r["workload"], r["concurrency"])
        if _usable(r) and (key not in best or r["requests_per_s"] > best[key]["requests_per_s"]):
            best[key] = r
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        key = (r["workload"], r["concurrency"])
        if key not in best or r["status"] in NOT_RUN:
            continue
        row = rows.setdefault(r["server"], {"server": r["server"], "cells": 0, "wins": 0,
                                            "per_workload": {}, "sum": 0.0, "low": 0.0,
                                            "high": 0.0})
        top = best[key]["requests_per_s"]
        share = low = high = 0.0
        if _usable(r):
            tied = r is best[key] or tied_with(best[key], r)
            share = 1.0 if tied else r["requests_per_s"] / top
            span = stats.bounds(r["requests_per_s"], _rate_ci(r))
            low, high = (span[0] / top, span[1] / top) if span else (share, share)
            low, high = min(low, share), max(high, share)
            row["wins"] += tied
        row["cells"] += 1
        row["sum"] += share
        row["low"] += low
        row["high"] += high
        row["per_workload"].setdefault(r["workload"], []).append(share)
    out = []
    for row in rows.values():
        out.append({
            "server": row["server"], "score": row["sum"] / row["cells"], "wins": row["wins"],
            "cells": row["cells"], "score_low": row["low"] / row["cells"],
            "score_high": row["high"] / row["cells"],
            "per_workload": {w: sum(v) / len(v) for w, v in row["per_workload"].items()},
        })
    out.sort(key=lambda r: -r["score"])
    for row in out:
        row["rank"] = 1 + sum(other["score_low"] > row["score_high"] for other in out)
    for row in out:
        row["tied"] = sum(other["rank"] == row["rank"] for other in out) > 1
    return out


def ranking_table(rank: list[dict[str, Any]], workloads: list[str], fmt: str = "simple") -> str:
    rows = [[f"{r['rank']}=" if r.get("tied") else r["rank"], r["server"],
             f"{100 * r['score']:.0f}%", f"{r['wins']}/{r['cells']}"]
            + [f"{100 * r['per_workload'][w]:.0f}%" if w in r["per_workload"] else "-"
               for w in workloads] for r in rank]
    headers = ["#", "server", "score", "best in"] + workloads
    return tabulate(rows, headers=headers, tablefmt=fmt, stralign="right")


def noise_warning(results: list[dict[str, Any]]) -> str:
    """A warning when other processes took a noticeable share of the server's core."""
    foreign = _median(r.get("foreign_cpu_util") for r in results) or 0.0
    client = _median(r.get("client_core_busy") for r in results) or 0.0
    client_load = sum(r.get("client_cpu_util") or 0.0 for r in results) / max(len(results), 1)
    problems = []
    if foreign >= 0.1:
        problems.append(f"other processes used a median {100 * foreign:.0f}% of the server's "
                        "core")
    if client >= 0.9 and client_load < 0.7:
        problems.append(f"the load generator's core was a median {100 * client:.0f}% busy, "
                        "mostly with other work")
    if not problems:
        return ""
    return ("WARNING: " + " and ".join(problems) + " during the runs: this machine was busy, "
            "so the figures are noisy (see the spreads and the 'others on srv core' column); "
            "rerun on a quiet machine before concluding")


def console_report(results: list[dict[str, Any]], header_note: str = "",
                   capacity: list[dict[str, Any]] | None = None) -> str:
    """Everything printed at the end of a run: per-workload tables, costs, ranking."""
    parts = []
    if header_note:
        parts.append(header_note)
    if noise_warning(results):
        parts.append(noise_warning(results))
    for workload in _order(c["workload"] for c in capacity or []):
        parts.append(f"== {capacity_heading(capacity or [], workload)} ==")
        parts.append(capacity_table(capacity or [], workload))
        parts.append("")
    for workload in workloads_of(results):
        parts.append(f"== {workload}: requests/s (median of repeats) ==")
        parts.append(throughput_table(results, workload))
        ref = reference_concurrency(results, workload)
        if ref is not None:
            parts.append(f"-- {workload} at c={ref}: cost per request (why) --")
            parts.append(cost_table(results, workload, ref))
            parts.append(f"-- {workload} at c={ref}: why --")
            parts.extend("  " + line for line in diagnose(results, workload, ref))
        parts.append("")
    parts.append(LEGEND)
    rank = ranking(results)
    if rank:
        parts.append("")
        parts.append("== ranking (mean share of the best req/s per cell; a tie with the best = "
                     "100%, errors or failure = 0; '=': a shared rank, scores within noise) ==")
        parts.append(ranking_table(rank, workloads_of(results)))
    lines = not_clean(results)
    if lines:
        parts.append("")
        parts.append("== not clean ==")
        parts.extend("  " + line for line in lines)
    return "\n".join(parts)


def not_clean(results: list[dict[str, Any]]) -> list[str]:
    """One line per result that is not clean (one per server and reason for n/a and
    skipped servers), and one per unstable cell."""
    lines = []
    skipped: set[str] = set()
    for r in results:
        if r["status"] in NOT_RUN and r["reason"]:
            key = f"{r['server']}: {r['reason'][:160]}"
            if key not in skipped:  # one line per server and reason
                skipped.add(key)
                lines.append(f"{r['server']}: " + (
                    r["reason"][:160] if r["status"] == "n/a"
                    else f"skipped: {r['reason'][:160]}"))
        elif r["status"] != "ok" and r["reason"]:
            lines.append(f"{r['server']} {r['workload']} c={r['concurrency']}: "
                         f"{r['status']}: {r['reason'][:160]}")
        if r.get("unstable"):
            lines.append(f"{r['server']} {r['workload']} c={r['concurrency']}: "
                         f"{r['unstable'][:160]}")
    return lines


def hosts_lines(meta: dict[str, Any]) -> list[str]:
    """One Markdown line per host of a run with remote hosts or --net veth (none else)."""
    return [f"- {h['role']} host {h['host']}: {h.get('hostname', '?')}, "
            f"{h.get('cpu_model', '?')}, {h.get('cpus', '?')} CPUs; kernel {h.get('kernel', '?')}"
            for h in meta.get("hosts") or []]


def summary_markdown(results: list[dict[str, Any]], meta: dict[str, Any],
                     capacity: list[dict[str, Any]] | None = None) -> str:
    """summary.md: the tables as GitHub Markdown, ready to paste into a note."""
    settings = meta.get("settings", {})
    lines = ["# tcp-zoo benchmark", ""]
    if meta.get("header_note"):
        lines += [f"> {meta['header_note']}", ""]
    if noise_warning(results):
        lines += [f"> {noise_warning(results)}", ""]
    lines += [
        f"- machine: {meta.get('machine', {}).get('cpu_model', '?')}, "
        f"{meta.get('machine', {}).get('cpus', '?')} CPUs; kernel "
        f"{meta.get('kernel', '?')}; Python {meta.get('python', '?').split()[0]}",
        f"- server cores {meta.get('server_cpus')}, load generator cores "
        f"{meta.get('client_cpus')}; system calls: {meta.get('perf') or 'perf'}",
        *hosts_lines(meta),
        f"- duration {settings.get('duration')} s, warm-up {settings.get('warmup')} s, "
        f"repeats {settings.get('repeat')} (round robin), idle {settings.get('idle')}, "
        f"rate {settings.get('rate') or 'closed loop'}, size {settings.get('size')} B; "
        f"wall time {meta.get('wall_s', 0):.0f} s",
        "", MD_LEGEND, "",
    ]
    for workload in _order(c["workload"] for c in capacity or []):
        lines += [f"## {capacity_heading(capacity or [], workload)}", "",
                  capacity_table(capacity or [], workload, "github"), ""]
    for workload in workloads_of(results):
        lines += [f"## {workload}", "", "### requests/s", "",
                  throughput_table(results, workload, "github"), "",
                  "### p99 latency", "", latency_table(results, workload, "p99", "github"), ""]
        for c in concurrencies_of(results, workload):
            lines += [f"### cost per request at c={c}", "",
                      cost_table(results, workload, c, "github"), ""]
            lines += [f"- {line}" for line in diagnose(results, workload, c)] + [""]
    rank = ranking(results)
    if rank:
        lines += ["## ranking", "", "Score: mean over all cells of the server's req/s as a "
                  "share of the best in that cell (errors or failure count 0).", "",
                  ranking_table(rank, workloads_of(results), "github"), ""]
    plots = meta.get("plots") or []
    if plots:
        lines += ["## plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


CSV_FIELDS = (
    "server", "workload", "concurrency", "status", "reason", "repeats", "requests_per_s",
    "requests_per_s_min", "requests_per_s_max", "spread_pct", "p50_us", "p90_us", "p99_us",
    "p999_us", "max_us", "errors_total", "server_cpu_s", "server_cpu_s_per_10k",
    "cpu_us_per_req", "syscalls_per_req", "ctx_per_req", "ctx_voluntary", "ctx_involuntary",
    "server_rss_bytes", "server_pss_bytes", "client_cpu_util", "client_bound",
    "foreign_cpu_util", "client_core_busy", "mb_per_s", "cpu_us_per_mb", "backend_wait_ms",
    "backend_wait_measured_ms", "littles_limit", "littles_share",
    "requests_per_s_ci_low", "requests_per_s_ci_high", "ci_pct", "p99_ci_low", "p99_ci_high",
    "ci_converged", "unstable", "capacity_rps", "capacity_low", "capacity_high",
    "capacity_target", "capacity_lowest_us",
)


def write_csv(path: str, results: list[dict[str, Any]],
              capacity: list[dict[str, Any]] | None = None) -> None:
    caps = {(c["server"], c["workload"], c["concurrency"]): c for c in capacity or []}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            row = dict(r)
            for key in LATENCY_KEYS:
                row[f"{key}_us"] = r["latency_us"].get(key)
            for key in ("requests_per_s", "p99"):
                iv = (r.get("ci") or {}).get(key) or {}
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = iv.get("low"), iv.get("high")
            cap = caps.get((r["server"], r["workload"], r["concurrency"]))
            if cap:
                row.update(capacity_rps=cap["capacity_rps"], capacity_low=cap["bracket"][0],
                           capacity_high=cap["bracket"][1],
                           capacity_target=f"{cap['key']}<={cap['target_us']:g}us",
                           capacity_lowest_us=cap.get("lowest"))
            writer.writerow(row)


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
    c = next(c for c in capacity if c["workload"] == workload)
    return (f"{workload}: capacity at {c['key']} <= {fmt_us(c['target_us'])} (open loop, "
            f"{c.get('arrivals', 'poisson')} arrivals, {c['concurrency']} connections; "
            f"bracket then bisect to {100 * c.get('resolution_asked', 0.1):.0f}%)")


def plot_capacity(capacity: list[dict[str, Any]], out_dir: str, note: str = "") -> list[str]:
    """Latency against offered load, every server on one figure per workload, with the
    target drawn: the hockey-stick curves of the capacity search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for workload in _order(c["workload"] for c in capacity):
        chosen = [c for c in capacity if c["workload"] == workload]
        key, target = chosen[0]["key"], chosen[0]["target_us"]
        fig, ax = plt.subplots(figsize=(9, 5.5))
        colors = plt.get_cmap("tab20").colors
        for i, c in enumerate(chosen):
            points = sorted((p["rate"], p[key]) for p in c["probes"]
                            if p["rate"] is not None and p[key])
            if points:
                ax.plot([p[0] for p in points], [p[1] / 1000 for p in points],
                        label=c["server"] + ("" if c["feasible"] else " (never met it)"),
                        color=colors[i % len(colors)],
                        marker="osD^"[i // len(colors) % 4])
        ax.axhline(target / 1000, color="red", linestyle="--",
                   label=f"target {key} {fmt_us(target)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s, open loop)")
        ax.set_ylabel(f"{key} latency (ms, from each request's due time)")
        ax.set_title(f"{workload}: {key} against offered load" + (f"\n{note}" if note else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        name = f"capacity_{workload}.png"
        written.append(save_figure(fig, out_dir, name))
    return written


def save_figure(fig: Any, out_dir: str, name: str) -> str:
    """Lay out, write ``out_dir/name`` (PNG, 100 dpi) and close one figure; return ``name``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(fig)
    return name


def plot(results: list[dict[str, Any]], out_dir: str, note: str = "") -> list[str]:
    """Throughput against concurrency and latency percentiles, one PNG each per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for workload in workloads_of(results):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        colors = plt.get_cmap("tab20").colors
        for i, server in enumerate(servers_of(results)):
            points = sorted((r["concurrency"], r["requests_per_s"]) for r in results
                            if r["workload"] == workload and r["server"] == server
                            and r["requests_per_s"] is not None and r["status"] not in FAILED)
            if points:
                # 20 colours and 4 markers: no two of up to 80 servers draw alike.
                ax.plot([p[0] for p in points], [p[1] for p in points], label=server,
                        color=colors[i % len(colors)], marker="osD^"[i // len(colors) % 4])
        ax.set_xscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"{workload}: throughput vs concurrency" + (f"\n{note}" if note else ""))
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, ncol=2)
        name = f"throughput_{workload}.png"
        written.append(save_figure(fig, out_dir, name))

        ref = reference_concurrency(results, workload)
        chosen = [r for r in results if r["workload"] == workload and r["concurrency"] == ref
                  and r["status"] not in FAILED and r["latency_us"].get("p50")]
        fig, ax = plt.subplots(figsize=(9, 5.5))
        width = 0.8 / 4
        for i, key in enumerate(("p50", "p90", "p99", "p999")):
            xs = [j + (i - 1.5) * width for j in range(len(chosen))]
            ax.bar(xs, [r["latency_us"].get(key) or 0 for r in chosen], width, label=key)
        ax.set_xticks(range(len(chosen)))
        ax.set_xticklabels([r["server"] + (" (errors!)" if r["errors_total"] else "")
                            for r in chosen], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("latency (us)")
        ax.set_title(f"{workload}: latency percentiles at c={ref}" + (f"\n{note}" if note else ""))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if chosen:
            ax.legend(fontsize=8)
        name = f"latency_{workload}.png"
        written.append(save_figure(fig, out_dir, name))
    return written


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(out_dir: str, runs: list[dict[str, Any]], meta: dict[str, Any],
                  capacity: list[dict[str, Any]] | None = None) -> list[str]:
    """Write results.json, results.csv, summary.md, the plots and index.html (the
    browsable report, bench.html_report); return the file names. ``capacity``: the
    searches of ``--slo`` (bench.capacity)."""
    os.makedirs(out_dir, exist_ok=True)
    results = aggregate(runs, (meta.get("settings") or {}).get("ci"))
    try:
        plots = plot(results, out_dir, meta.get("header_note", ""))
        if capacity:
            plots += plot_capacity(capacity, out_dir, meta.get("header_note", ""))
    except Exception as exc:  # plotting must never lose the measurements
        plots = []
        meta["plot_error"] = repr(exc)
    meta["plots"] = plots
    document = {"format": "tcp-zoo-bench/1", "meta": meta, "runs": results,
                "ranking": ranking(results)}
    if capacity is not None:
        document["capacity"] = capacity
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(_jsonable(document), f, indent=1)
    write_csv(os.path.join(out_dir, "results.csv"), results, capacity)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_markdown(results, meta, capacity))
    from bench import html_report

    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(html_report.render(results, meta, out_dir, capacity))
    return ["results.json", "results.csv", "summary.md", "index.html", *plots]


def load_results(path: str) -> dict[str, Any]:
    """A results.json (or the directory holding one) as written by write_outputs."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        return json.load(f)
