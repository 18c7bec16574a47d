"""A run's outputs: the console report, results.json, results.csv, summary.md, the plots
and index.html, written from the aggregated results (bench.aggregate); and results.json
read back (:func:`load_results`, :func:`results_of`).

The parts each have their module: bench.records (the run and result records and their
JSON and CSV form), bench.aggregate (folding repeats, the ranking), bench.tables (the
tables), bench.why (the readings in words), bench.plots and bench.html_report.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from bench import plots
from bench.aggregate import (
    aggregate,
    concurrencies_of,
    order,
    ranking,
    reference_concurrency,
    workloads_of,
)
from bench.records import Result, Run, csv_columns, csv_row
from bench.tables import (
    LEGEND,
    MD_LEGEND,
    capacity_heading,
    capacity_table,
    cost_table,
    latency_table,
    ranking_table,
    throughput_table,
)
from bench.why import diagnose, noise_warning, not_clean

FORMAT = "tcp-zoo-bench/1"
CAPACITY_COLUMNS = ("capacity_rps", "capacity_low", "capacity_high", "capacity_target",
                    "capacity_lowest_us")


def console_report(results: list[Result], header_note: str = "",
                   capacity: list[dict[str, Any]] | None = None) -> str:
    """Everything printed at the end of a run: per-workload tables, costs, ranking."""
    parts = []
    if header_note:
        parts.append(header_note)
    warning = noise_warning(results)
    if warning:
        parts.append(warning)
    for workload in order(c["workload"] for c in capacity or []):
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
            why = diagnose(results, workload, ref)
            if why:
                parts.append(f"-- {workload} at c={ref}: why --")
                parts.extend("  " + line for line in why)
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


def hosts_lines(meta: dict[str, Any]) -> list[str]:
    """One Markdown line per host of a run with remote hosts or --net veth (none else)."""
    return [f"- {h['role']} host {h['host']}: {h.get('hostname', '?')}, "
            f"{h.get('cpu_model', '?')}, {h.get('cpus', '?')} CPUs; kernel {h.get('kernel', '?')}"
            for h in meta.get("hosts") or []]


def summary_markdown(results: list[Result], meta: dict[str, Any],
                     capacity: list[dict[str, Any]] | None = None) -> str:
    """summary.md: the tables as GitHub Markdown, ready to paste into a note."""
    settings = meta.get("settings", {})
    lines = ["# tcp-zoo benchmark", ""]
    if meta.get("header_note"):
        lines += [f"> {meta['header_note']}", ""]
    warning = noise_warning(results)
    if warning:
        lines += [f"> {warning}", ""]
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
    for workload in order(c["workload"] for c in capacity or []):
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


def write_csv(path: str, results: list[Result],
              capacity: list[dict[str, Any]] | None = None) -> None:
    """results.csv: a row per result (bench.records.csv_row), with its capacity search."""
    caps = {(c["server"], c["workload"], c["concurrency"]): c for c in capacity or []}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*csv_columns(), *CAPACITY_COLUMNS])
        writer.writeheader()
        for r in results:
            row = csv_row(r)
            cap = caps.get(r.cell)
            if cap:
                row.update(capacity_rps=cap["capacity_rps"], capacity_low=cap["bracket"][0],
                           capacity_high=cap["bracket"][1],
                           capacity_target=f"{cap['key']}<={cap['target_us']:g}us",
                           capacity_lowest_us=cap.get("lowest"))
            writer.writerow(row)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(out_dir: str, runs: list[Run], meta: dict[str, Any],
                  capacity: list[dict[str, Any]] | None = None) -> list[str]:
    """Write results.json, results.csv, summary.md, the plots and index.html (the
    browsable report, bench.html_report); return the file names. ``capacity``: the
    searches of ``--slo`` (bench.capacity)."""
    os.makedirs(out_dir, exist_ok=True)
    results = aggregate(runs, (meta.get("settings") or {}).get("ci"))
    try:
        written = plots.plot(results, out_dir, meta.get("header_note", ""))
        if capacity:
            written += plots.plot_capacity(capacity, out_dir, meta.get("header_note", ""))
    except Exception as exc:  # plotting must never lose the measurements
        written = []
        meta["plot_error"] = repr(exc)
    meta["plots"] = written
    document = {"format": FORMAT, "meta": meta, "runs": [r.to_dict() for r in results],
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
    return ["results.json", "results.csv", "summary.md", "index.html", *written]


def load_results(path: str) -> dict[str, Any]:
    """A results.json (or the directory holding one) as written by write_outputs."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        return json.load(f)


def results_of(document: dict[str, Any]) -> list[Result]:
    """The results of a results.json document (any version's keys: bench.records)."""
    return [Result.from_dict(r) for r in document.get("runs", [])]
