"""Fold run records into results, and rank the servers.

* :func:`aggregate` folds the repeats of one (server, workload, concurrency) into one
  :class:`bench.records.Result`: the median requests/s with its spread (min, max, and
  the half-range as a percentage of the median), the median of each latency percentile
  (max: the largest seen), errors summed, every per-run figure folded as its field
  says (bench.records), and a status that keeps the worst failure's reason. Each
  median figure gets a 95% confidence interval over its repeats (``ci``:
  :mod:`bench.stats`); "best" marks and the ranking count only differences whose
  intervals do not overlap (:func:`tied_with`).
* :func:`best_by_column` and :func:`ranking` apply that rule to a table's columns and
  to the whole run; the ``*_of`` helpers give the order the tables use.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from bench import stats
from bench.records import (
    CI_KEYS,
    FAILED,
    NOT_RUN,
    PERCENTILES,
    STATUS_ORDER,
    Result,
    Run,
    Status,
    client_bound,
    metric_fields,
)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    data = [v for v in values if v is not None]
    return float(statistics.median(data)) if data else None


def aggregate(runs: list[Run], ci_target: float | None = None) -> list[Result]:
    """One result per (server, workload, concurrency), in first-seen order.

    ``ci_target`` (percent): the repeats were added until each interval was within
    it (``--ci``): the intervals are widened for that stop (:mod:`bench.stats`) and a
    cell whose requests/s interval is wider is marked not converged."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.cell, []).append(run)
    return [_fold(group, ci_target) for group in groups.values()]


def _fold(group: list[Run], ci_target: float | None = None) -> Result:
    first = group[0]
    # medians over the repeats that did not fail (a failed repeat is the status's business)
    measured = [r for r in group if r.measured]
    status = min(group, key=lambda r: STATUS_ORDER.index(r.status)).status
    if measured and status in FAILED:
        status = Status.PARTIAL
    reasons = dict.fromkeys(r.reason for r in group if r.reason)
    rps = [r.requests_per_s for r in measured if r.requests_per_s is not None]
    med = median(rps)
    errors: dict[str, int] = {}
    for run in group:
        for kind, count in run.errors.items():
            errors[kind] = errors.get(kind, 0) + int(count or 0)
    latency = {k: median(r.latency_us.get(k) for r in measured) for k in PERCENTILES}
    maxes = [m for r in measured if (m := r.latency_us.get("max"))]
    latency["max"] = max(maxes) if maxes else None
    figures: dict[str, Any] = {}
    for f in metric_fields():
        values = [getattr(r, f.name) for r in measured]
        if f.metadata["fold"] == "median":
            figures[f.name] = median(values)
        elif f.metadata["fold"] == "peak":
            peaks = [v for v in values if v]
            figures[f.name] = max(peaks) if peaks else None
        elif f.metadata["fold"] == "first":
            figures[f.name] = getattr(first, f.name)
    figures["client_bound"] = client_bound(figures["client_cpu_util"])
    sequential = ci_target is not None
    ci: dict[str, dict[str, Any] | None] = {}
    for name in CI_KEYS:
        iv = stats.interval([r.value(name) for r in measured], sequential)
        ci[name] = iv.as_dict() if iv else None
    rate_ci = ci["requests_per_s"]
    return Result(
        server=first.server, workload=first.workload, concurrency=first.concurrency,
        status=status, reason="; ".join(reasons)[:500],
        repeats=len(group), measured_repeats=len(measured),
        requests_per_s=med,
        requests_per_s_min=min(rps) if rps else None,
        requests_per_s_max=max(rps) if rps else None,
        spread_pct=(max(rps) - min(rps)) / 2 / med * 100 if med and len(rps) > 1 else None,
        latency_us=latency, errors=errors, errors_total=sum(errors.values()),
        **figures,
        server_exit=sorted({str(r.server_exit) for r in group}),
        samples=group, ci=ci,
        ci_pct=rate_ci["half_pct"] if rate_ci else None,
        ci_converged=(None if ci_target is None
                      else bool(rate_ci and rate_ci["half_pct"] <= ci_target)),
        unstable="; ".join(dict.fromkeys(r.unstable for r in measured if r.unstable)),
    )


# -- order and the tie rule ----------------------------------------------------------------


def order(values: Iterable[Any]) -> list[Any]:
    """The values without repeats, in first-seen order."""
    return list(dict.fromkeys(values))


def workloads_of(results: list[Result]) -> list[str]:
    return order(r.workload for r in results)


def servers_of(results: list[Result]) -> list[str]:
    return order(r.server for r in results)


def concurrencies_of(results: list[Result], workload: str | None = None) -> list[int]:
    return sorted({r.concurrency for r in results if workload in (None, r.workload)})


def reference_concurrency(results: list[Result], workload: str) -> int | None:
    """The concurrency the cost table uses: 100 when measured, else the largest."""
    concs = concurrencies_of(results, workload)
    if not concs:
        return None
    return 100 if 100 in concs else concs[-1]


def tied_with(top: Result, other: Result) -> bool:
    """Whether two results' requests/s are a tie under the one rule (bench.stats)."""
    assert top.requests_per_s is not None and other.requests_per_s is not None
    return not stats.differs(top.requests_per_s, top.interval("requests_per_s"),
                             other.requests_per_s, other.interval("requests_per_s"))


def _fastest(results: Iterable[Result]) -> dict[tuple[str, int], Result]:
    """The usable result with the highest requests/s of every (workload, concurrency)."""
    best: dict[tuple[str, int], Result] = {}
    for r in results:
        key = (r.workload, r.concurrency)
        if r.usable and (key not in best or r.requests_per_s > best[key].requests_per_s):  # type: ignore[operator]
            best[key] = r
    return best


def best_by_column(results: list[Result], workload: str) -> dict[int, set[str]]:
    """For each concurrency the servers with the highest usable requests/s: the top
    one and every one whose interval overlaps it (tied)."""
    top = {c: r for (w, c), r in _fastest(results).items() if w == workload}
    best: dict[int, set[str]] = {c: set() for c in top}
    for r in results:
        if r.workload == workload and r.usable and r.concurrency in top:
            if r is top[r.concurrency] or tied_with(top[r.concurrency], r):
                best[r.concurrency].add(r.server)
    return best


def ranking(results: list[Result]) -> list[dict[str, Any]]:
    """Servers ordered by score: the mean over all cells of req/s relative to the best.

    A failed cell, or one with errors, scores 0, so a server that only looks fast
    because it dropped clients does not win. A cell tied with the best (intervals
    overlap) scores 1 and counts as a win. The score has an interval too (the mean of
    each cell's interval bounds over the best's median), and servers whose score
    intervals overlap share a rank: a server's rank is one more than the number of
    servers whose score interval lies wholly above its own.
    """
    best = _fastest(results)
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        key = (r.workload, r.concurrency)
        if key not in best or r.status in NOT_RUN:
            continue
        row = rows.setdefault(r.server, {"server": r.server, "cells": 0, "wins": 0,
                                         "per_workload": {}, "sum": 0.0, "low": 0.0,
                                         "high": 0.0})
        top = best[key].requests_per_s
        assert top is not None
        share = low = high = 0.0
        if r.usable and r.requests_per_s is not None:
            tied = r is best[key] or tied_with(best[key], r)
            share = 1.0 if tied else r.requests_per_s / top
            span = stats.bounds(r.requests_per_s, r.interval("requests_per_s"))
            low, high = (span[0] / top, span[1] / top) if span else (share, share)
            low, high = min(low, share), max(high, share)
            row["wins"] += tied
        row["cells"] += 1
        row["sum"] += share
        row["low"] += low
        row["high"] += high
        row["per_workload"].setdefault(r.workload, []).append(share)
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
