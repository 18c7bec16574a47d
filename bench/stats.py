"""Confidence intervals over repeats, the tie rule, and the stationarity check.

Every figure of a table is the median of its repeats. Its 95% interval here is a
Student t-interval computed on the logarithms of the repeats, mapped back:

* why t and not the bootstrap: the harness runs 2-5 repeats of a cell. A percentile
  bootstrap can never reach beyond the smallest and largest repeat, so with two
  repeats it is their range, which holds the true median only half of the time; the
  t-interval widens for small samples by the t quantile (12.7 standard errors for two
  repeats), which is what keeps its coverage honest there.
* why logarithms: noise on a shared machine is multiplicative (a slow minute scales a
  run by a factor), so the log of a rate or a latency is close to symmetric, where a
  t-interval is at its best, and the interval can never go below zero. For symmetric
  noise in the log, its centre (the geometric mean) is also the median the tables show.
* adaptive repeats (``--ci``): adding repeats until the interval is narrow enough
  favours stops at which the spread happens to look small, and a plain 95% interval then
  holds the true median only ~91% of the time (simulated, 10% noise). Such intervals use
  the quantile of a 97.5% interval instead, which brings the coverage back to 94-96% for
  normal, log-normal and uniform noise (tests/test_stats.py checks >= 90 of 100 trials).

Two cells differ only when their intervals do not overlap; otherwise they are tied
(:func:`differs`). A cell with a single repeat has no interval: there a difference
counts only beyond :data:`SINGLE_REPEAT_THRESHOLD` (the noise a single run shows here).
Report rankings, "best" marks and ``bench compare`` all use this one rule.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

LEVEL = 0.95
SEQUENTIAL_LEVEL = 0.975  # the widened quantile after adaptive stopping (see above)
SINGLE_REPEAT_THRESHOLD = 0.10
# stationarity of one run: its two halves
HALVES_RATE_TOLERANCE = 0.20  # at least this relative difference in requests/s, and
HALVES_Z = 3.0  # beyond this many standard errors of the two counts
HALVES_P99_FACTOR = 2.0  # p99 of one half at least twice the other's, and
HALVES_P99_FLOOR_US = 1000  # more than 1 ms apart (sub-ms p99 jitters by factors)
HALVES_MIN_REQUESTS = 200  # fewer answers in a half: its p99 is not judged
BUSY_NEIGHBOUR = 0.2  # others' share of the server's core that makes a run suspect
# --ci: no cell stops before 5 repeats (fewer make the stopping rule too eager: coverage
# 94% at 3, 96% at 5 in the simulation), nor goes past --max-repeats (default 40: 10%
# noise needs a median of 22 repeats for ±5%, and 1 in 10 cells more than 30)
MIN_REPEATS = 5
DEFAULT_MAX_REPEATS = 40


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (p in (0.5, 1)).

    Exact for 1 and 2 degrees of freedom; from 3 on the Cornish-Fisher expansion
    around the normal quantile (within 0.01 of the tables at 3, 0.001 from 6)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError("t_quantile: p in (0.5, 1) and df >= 1")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        a = p - 0.5
        return math.sqrt(8 * a * a / (1 - 4 * a * a))
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Interval:
    """A median over ``n`` repeats with its confidence interval ``low``..``high``."""

    median: float
    low: float
    high: float
    n: int
    level: float

    @property
    def half_pct(self) -> float:
        """Half the interval's width as a percentage of the median (the table's ±)."""
        if not self.median:
            return math.inf
        return (self.high - self.low) / 2 / abs(self.median) * 100

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "n": self.n, "level": self.level,
                "half_pct": self.half_pct, "method": "t on log"}


def interval(values: list[float], sequential: bool = False) -> Interval | None:
    """The 95% interval of the median of ``values``; None for fewer than two.

    ``sequential``: the repeats were added until the interval was narrow (``--ci``),
    so the wider quantile applies (module docstring)."""
    data = [float(v) for v in values if v is not None]
    if len(data) < 2:
        return None
    n = len(data)
    t = t_quantile(1 - (1 - (SEQUENTIAL_LEVEL if sequential else LEVEL)) / 2, n - 1)
    median = float(statistics.median(data))
    if min(data) > 0:
        logs = [math.log(v) for v in data]
        centre, spread = statistics.fmean(logs), statistics.stdev(logs)
        half = t * spread / math.sqrt(n)
        low, high = math.exp(centre - half), math.exp(centre + half)
    else:  # a zero (nothing measured) cannot be logged: the plain t-interval
        centre, spread = statistics.fmean(data), statistics.stdev(data)
        half = t * spread / math.sqrt(n)
        low, high = centre - half, centre + half
    # the median shown always lies inside its interval
    return Interval(median, min(low, median), max(high, median), n, LEVEL)


def converged(iv: Interval | None, target_pct: float) -> bool:
    """Whether the interval is within ±``target_pct`` % of its median."""
    return iv is not None and iv.half_pct <= target_pct


def needs_more(values: list[float], target_pct: float, min_repeats: int = MIN_REPEATS,
               max_repeats: int = DEFAULT_MAX_REPEATS) -> bool:
    """Adaptive repeats: does a cell with these repeats need another one?"""
    if len(values) >= max_repeats:
        return False
    if len(values) < min_repeats:
        return True
    return not converged(interval(values, sequential=True), target_pct)


def bounds(value: float | None, iv: dict[str, Any] | Interval | None,
           ) -> tuple[float, float] | None:
    """(low, high) of a figure: its interval, or None when it has none."""
    if value is None:
        return None
    if isinstance(iv, Interval):
        return iv.low, iv.high
    if iv and iv.get("low") is not None and iv.get("high") is not None:
        return float(iv["low"]), float(iv["high"])
    return None


def differs(a: float, a_iv: dict[str, Any] | Interval | None, b: float,
            b_iv: dict[str, Any] | Interval | None) -> bool:
    """The one tie rule: do two figures differ beyond their noise?

    Both with intervals: only when the intervals do not overlap. Otherwise (single
    repeats) when they differ by more than :data:`SINGLE_REPEAT_THRESHOLD` of the
    larger, or, one interval known, when the other figure also lies outside it."""
    ra, rb = bounds(a, a_iv), bounds(b, b_iv)
    if ra and rb:
        return ra[1] < rb[0] or rb[1] < ra[0]
    beyond = abs(a - b) > SINGLE_REPEAT_THRESHOLD * max(abs(a), abs(b))
    if ra:
        return beyond and not ra[0] <= b <= ra[1]
    if rb:
        return beyond and not rb[0] <= a <= rb[1]
    return beyond


def halves_verdict(halves: dict[str, Any] | None) -> str:
    """Why a run's first and second halves disagree (not stationary); "" when they agree.

    Requests/s: the halves differ by more than 20% and by more than three standard
    errors of their counts (a count of N answers has a standard error of about
    sqrt(N)). p99: one half's is at least twice the other's and more than 1 ms apart,
    judged only with at least 200 answers in each half (a p99 from fewer is a handful
    of samples)."""
    if not halves:
        return ""
    (d1, d2), (n1, n2) = halves["duration_s"], halves["requests"]
    if d1 <= 0 or d2 <= 0 or n1 + n2 == 0:
        return ""
    r1, r2 = n1 / d1, n2 / d2
    rel = abs(r1 - r2) / max(r1, r2)
    se = math.sqrt(n1 / d1**2 + n2 / d2**2)
    if rel > HALVES_RATE_TOLERANCE and abs(r1 - r2) > HALVES_Z * se:
        return f"unstable: requests/s {r1:.0f} in the first half, {r2:.0f} in the second"
    p1, p2 = halves.get("p99_us") or (0, 0)
    if min(n1, n2) >= HALVES_MIN_REQUESTS and min(p1, p2) > 0:
        lo, hi = sorted((p1, p2))
        if hi >= HALVES_P99_FACTOR * lo and hi - lo > HALVES_P99_FLOOR_US:
            return f"unstable: p99 {p1} us in the first half, {p2} us in the second"
    return ""


def neighbour_verdict(foreign_cpu_util: float | None) -> str:
    """Why other processes on the server's core make a run suspect; "" when they did not."""
    if foreign_cpu_util is not None and foreign_cpu_util >= BUSY_NEIGHBOUR:
        return (f"unstable: other processes took {100 * foreign_cpu_util:.0f}% of the "
                "server's core")
    return ""
