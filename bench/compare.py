"""``python -m bench compare OLD NEW``: what changed between two result sets.

OLD and NEW are results directories or results.json files written by
``python -m bench``. For every (server, workload, concurrency) measured in
both, the table shows requests/s and p99 before and after, as a ratio and a
percentage, and flags a change as significant only when it is larger than the
noise the runs themselves measured, by the rule the report's "best" marks and
ranking use (:func:`bench.stats.differs`): the two 95% confidence intervals over
the repeats do not overlap (with a single repeat there is no interval, so a 10%
threshold stands in). Result sets written before intervals were stored fall back
to the min..max range over the repeats.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tabulate import tabulate

from bench import stats
from bench.records import FAILED, Result
from bench.report import load_results, results_of
from bench.tables import fmt_rate, fmt_us


def _interval(result: Result) -> dict[str, Any] | None:
    """The requests/s interval; for older result sets the min..max of the repeats."""
    if result.ci is not None:
        return result.interval("requests_per_s")
    lo, hi = result.requests_per_s_min, result.requests_per_s_max
    return {"low": lo, "high": hi} if lo is not None and hi is not None and hi > lo else None


def significant(old: Result, new: Result) -> bool:
    """True when the req/s change lies beyond the noise (bench.stats.differs)."""
    a, b = old.requests_per_s, new.requests_per_s
    if not a or not b:
        return False
    return stats.differs(a, _interval(old), b, _interval(new))


def _pct(old: float | None, new: float | None) -> tuple[str, str]:
    if not old or new is None:
        return "-", "-"
    return f"{new / old:.2f}x", f"{(new / old - 1) * 100:+.1f}%"


def compare_rows(old: list[Result], new: list[Result]) -> list[list[str]]:
    """One row per cell present in both; failures shown as such."""
    old_by = {r.cell: r for r in old}
    rows = []
    for r in new:
        key = r.cell
        if key not in old_by:
            continue
        o = old_by[key]
        if o.status in FAILED or r.status in FAILED:
            rows.append([*map(str, key), str(o.status), str(r.status), "", "", "", "", "", "",
                         ""])
            continue
        ratio, pct = _pct(o.requests_per_s, r.requests_per_s)
        p99_old, p99_new = o.latency_us.get("p99"), r.latency_us.get("p99")
        _, p99_pct = _pct(p99_old, p99_new)
        flag = ""
        if significant(o, r):
            flag = "faster" if r.requests_per_s > o.requests_per_s else "SLOWER"  # type: ignore[operator]
        rows.append([key[0], key[1], str(key[2]), fmt_rate(o.requests_per_s),
                     fmt_rate(r.requests_per_s), ratio, pct, fmt_us(p99_old),
                     fmt_us(p99_new), p99_pct, flag])
    return rows


HEADERS = ["server", "workload", "c", "old req/s", "new req/s", "ratio", "change",
           "old p99", "new p99", "p99 change", "beyond noise"]


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; exit 2 when a result set cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m bench compare",
                                     description="Compare two python -m bench result sets.")
    parser.add_argument("old", help="results directory or results.json")
    parser.add_argument("new", help="results directory or results.json")
    parser.add_argument("--markdown", action="store_true", help="GitHub Markdown table")
    options = parser.parse_args(argv)
    try:
        old, new = load_results(options.old), load_results(options.new)
        rows = compare_rows(results_of(old), results_of(new))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        print(f"python -m bench compare: error: cannot read results: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("no (server, workload, concurrency) measured in both result sets")
        return 0
    for label, doc in (("old", old), ("new", new)):
        meta = doc.get("meta", {})
        print(f"{label}: {meta.get('started', '?')} git {meta.get('git', '?')} "
              f"{meta.get('header_note', '')}".rstrip())
    print(tabulate(rows, headers=HEADERS, tablefmt="github" if options.markdown else "simple",
                   stralign="right"))
    flagged = sum(1 for row in rows if row[-1])
    print(f"\n{flagged} of {len(rows)} changes lie beyond the noise (95% intervals over the "
          "repeats do not overlap); the rest are ties")
    return 0
