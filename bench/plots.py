"""The report's plots (matplotlib, Agg backend), one PNG per figure.

:func:`plot` draws per workload the throughput against concurrency and the latency
percentiles at the reference concurrency; :func:`plot_capacity` the latency against
offered load of the capacity searches (``--slo``), with the target drawn.
"""

from __future__ import annotations

import os
from typing import Any

from bench.aggregate import order, reference_concurrency, servers_of, workloads_of
from bench.records import FAILED, PERCENTILES, Result
from bench.tables import fmt_us


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(plt: Any, i: int) -> dict[str, Any]:
    """The colour and marker of the i-th line: 20 colours and 4 markers, so no two of up
    to 80 servers draw alike."""
    colors = plt.get_cmap("tab20").colors
    return {"color": colors[i % len(colors)], "marker": "osD^"[i // len(colors) % 4]}


def save_figure(fig: Any, out_dir: str, name: str) -> str:
    """Lay out, write ``out_dir/name`` (PNG, 100 dpi) and close one figure; return ``name``."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(fig)
    return name


def plot_capacity(capacity: list[dict[str, Any]], out_dir: str, note: str = "") -> list[str]:
    """Latency against offered load, every server on one figure per workload, with the
    target drawn: the hockey-stick curves of the capacity search."""
    plt = _pyplot()
    written = []
    for workload in order(c["workload"] for c in capacity):
        chosen = [c for c in capacity if c["workload"] == workload]
        key, target = chosen[0]["key"], chosen[0]["target_us"]
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, c in enumerate(chosen):
            points = sorted((p["rate"], p[key]) for p in c["probes"]
                            if p["rate"] is not None and p[key])
            if points:
                ax.plot([p[0] for p in points], [p[1] / 1000 for p in points],
                        label=c["server"] + ("" if c["feasible"] else " (never met it)"),
                        **_style(plt, i))
        ax.axhline(target / 1000, color="red", linestyle="--",
                   label=f"target {key} {fmt_us(target)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s, open loop)")
        ax.set_ylabel(f"{key} latency (ms, from each request's due time)")
        ax.set_title(f"{workload}: {key} against offered load" + (f"\n{note}" if note else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        written.append(save_figure(fig, out_dir, f"capacity_{workload}.png"))
    return written


def plot(results: list[Result], out_dir: str, note: str = "") -> list[str]:
    """Throughput against concurrency and latency percentiles, one PNG each per workload."""
    plt = _pyplot()
    written = []
    for workload in workloads_of(results):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, server in enumerate(servers_of(results)):
            points = sorted((r.concurrency, r.requests_per_s) for r in results
                            if r.workload == workload and r.server == server
                            and r.measured)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=server,
                        **_style(plt, i))
        ax.set_xscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"{workload}: throughput vs concurrency" + (f"\n{note}" if note else ""))
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, ncol=2)
        written.append(save_figure(fig, out_dir, f"throughput_{workload}.png"))

        ref = reference_concurrency(results, workload)
        chosen = [r for r in results if r.workload == workload and r.concurrency == ref
                  and r.status not in FAILED and r.latency_us.get("p50")]
        fig, ax = plt.subplots(figsize=(9, 5.5))
        width = 0.8 / len(PERCENTILES)
        for i, key in enumerate(PERCENTILES):
            xs = [j + (i - (len(PERCENTILES) - 1) / 2) * width for j in range(len(chosen))]
            ax.bar(xs, [r.latency_us.get(key) or 0 for r in chosen], width, label=key)
        ax.set_xticks(range(len(chosen)))
        ax.set_xticklabels([r.server + (" (errors!)" if r.errors_total else "")
                            for r in chosen], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("latency (us)")
        ax.set_title(f"{workload}: latency percentiles at c={ref}" + (f"\n{note}" if note else ""))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if chosen:
            ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir, f"latency_{workload}.png"))
    return written
