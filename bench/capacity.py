"""Capacity at a latency target: the highest open-loop rate a server sustains (``--slo``).

For one server, workload and connection count, :func:`search` finds the highest offered
rate (requests/s, open loop, latency counted from each request's due time) whose
chosen percentile stays within the target with no errors:

1. one closed-loop run gives the peak throughput P, a ceiling for the open loop (a rate
   above what the server completes back to back only queues up);
2. bracket: open-loop runs at P, P/2, P/4, ... until one meets the target (a rate that
   meets it at P is raised by half until one does not);
3. bisect, geometrically, between the highest rate that met the target and the lowest
   that did not, until they are within the resolution (10% by default) or the step
   budget is spent.

At most ``steps`` open-loop runs, so a server's search costs at most ``steps + 1`` runs.
The capacity is the bracket's lower end, a rate that was measured to meet the target;
the true capacity lies in the bracket [low, high) as far as one run per rate can tell.
A server that meets the target at no rate tried (down to :data:`FLOOR_RPS`) is reported
as infeasible, with the lowest value of the percentile seen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from bench.records import FAILED, NOT_RUN, PERCENTILES, Run, Status

DEFAULT_STEPS = 6
DEFAULT_RESOLUTION = 0.10
FLOOR_RPS = 5.0
RAISE_FACTOR = 1.5
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_slo(text: str) -> tuple[str, float]:
    """``p99=2ms`` -> ("p99", 2000.0): the percentile and its target in microseconds.

    Raises ValueError with the reason for anything else."""
    key, sep, value = text.strip().partition("=")
    key = key.strip().lower()
    if not sep or key not in PERCENTILES:
        raise ValueError(f"expected PERCENTILE=TIME with PERCENTILE one of "
                         f"{', '.join(PERCENTILES)} (e.g. p99=2ms), got {text!r}")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(us|ms|s)\s*", value,
                         re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a time with a unit (us, ms or s) after {key}=, got "
                         f"{value!r}")
    target = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(target) or target <= 0 or target > 60e6:
        raise ValueError(f"the target must lie in (0, 60 s], got {value!r}")
    return key, target


def meets(record: Run, key: str, target_us: float) -> bool:
    """A probe meets the target: measured, no errors, its percentile within it."""
    value = record.latency_us.get(key)
    return (record.status == Status.OK and not record.errors_total
            and record.requests > 0 and value is not None and value <= target_us)


def search(probe: Callable[[float | None], Run], key: str, target_us: float,
           steps: int = DEFAULT_STEPS, resolution: float = DEFAULT_RESOLUTION,
           ) -> dict[str, Any]:
    """Search the capacity with ``probe(rate)`` (None: closed loop), one run record each.

    Returns {"capacity_rps", "bracket": [low, high], "feasible", "resolution" (the
    bracket's relative width reached), "lowest": the smallest value of the percentile
    seen, "peak_rps", "probes": [{"rate", "requests_per_s", key, "ok", "status"}], and
    "reason" when no rate met the target}."""
    if steps < 1 or not 0 < resolution < 1:
        raise ValueError("search: steps >= 1 and 0 < resolution < 1")
    probes: list[dict[str, Any]] = []

    def run(rate: float | None) -> bool:
        record = probe(rate)
        ok = meets(record, key, target_us)
        probes.append({"rate": rate, "requests_per_s": record.requests_per_s,
                       key: record.latency_us.get(key), "ok": ok,
                       "status": str(record.status), "errors_total": record.errors_total,
                       "reason": record.reason})
        return ok

    run(None)
    peak = probes[0]["requests_per_s"]
    result: dict[str, Any] = {"key": key, "target_us": target_us, "peak_rps": peak,
                              "capacity_rps": None, "bracket": [None, None],
                              "feasible": False, "resolution": None, "probes": probes,
                              "reason": ""}
    if not peak or probes[0]["status"] in FAILED:
        result["reason"] = ("the closed-loop run measured nothing: "
                            + (probes[0]["reason"] or probes[0]["status"] or "?"))
        result["lowest"] = None
        return result
    low: float | None = None
    high: float | None = None
    rate = float(peak)
    for _ in range(steps):
        if run(rate):
            low = rate
        else:
            high = rate
        if low is not None and high is not None:
            if high / low <= 1 + resolution:
                break
            rate = math.sqrt(low * high)
        elif low is None:
            rate /= 2
            if rate < FLOOR_RPS:
                break
        else:
            rate *= RAISE_FACTOR
    seen = [p[key] for p in probes if p[key] is not None and p["rate"] is not None]
    result["lowest"] = min(seen) if seen else None
    result["bracket"] = [low, high]
    if low is None:
        result["reason"] = (f"no rate down to {rate:.0f} req/s kept {key} within "
                            f"{target_us / 1000:g} ms without errors")
        return result
    result.update(capacity_rps=low, feasible=True,
                  resolution=None if high is None else high / low - 1)
    return result


def theoretical_md1_p99(rate: float, service_s: float, quantile: float = 0.99) -> float:
    """The ``quantile`` of the sojourn time (wait + service) of an M/D/1 queue, in s.

    Poisson arrivals at ``rate``, one server, every service taking exactly
    ``service_s`` (utilisation rho = rate * service_s < 1). The waiting time W has the
    distribution found by Erlang (1909) and written in closed form by Crommelin (1932):

        P(W <= x) = (1 - rho) * sum_{k=0}^{floor(x/D)} (-lambda (x - k D))^k / k!
                    * exp(lambda (x - k D))

    and the sojourn time is W + D. The sum alternates, so it is used only for x up to a
    few D (enough for the targets tested); the quantile is found by bisection."""
    rho = rate * service_s
    if not 0 <= rho < 1:
        raise ValueError("theoretical_md1_p99: needs rate * service_s < 1")

    def cdf(x: float) -> float:
        total = 0.0
        for k in range(int(x // service_s) + 1):
            u = rate * (x - k * service_s)
            total += (-u) ** k / math.factorial(k) * math.exp(u)
        return (1 - rho) * total

    if cdf(0.0) >= quantile:
        return service_s
    lo, hi = 0.0, service_s
    while cdf(hi) < quantile:
        lo, hi = hi, hi * 2
        if hi > 40 * service_s:
            raise ValueError("theoretical_md1_p99: the quantile lies too far out for the "
                             "alternating sum")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < quantile else (lo, mid)
    return hi + service_s


def md1_capacity(service_s: float, target_s: float, quantile: float = 0.99) -> float:
    """The highest Poisson rate at which an M/D/1 queue's sojourn quantile is within
    ``target_s`` (bisection on :func:`theoretical_md1_p99`, which grows with the rate)."""
    if target_s <= service_s:
        raise ValueError("md1_capacity: the target must exceed the service time")
    lo, hi = 0.0, 1 / service_s
    for _ in range(60):
        mid = (lo + hi) / 2
        if theoretical_md1_p99(mid, service_s, quantile) <= target_s:
            lo = mid
        else:
            hi = mid
    return lo


def _probe(rate: float | None, *, target: Any, workload: str, conc: int, rep: int,
           settings: Any, cpus: tuple[list[int], list[int]], use_perf: bool, bar: Any,
           records: list[Run]) -> Run:
    """One run of a search: a fresh server at ``rate`` (None: closed loop)."""
    import dataclasses

    from bench import runner

    what = "closed loop" if rate is None else f"{rate:.0f} req/s"
    bar.start(f"--slo {target.name} {workload} c={conc}: {what}")
    record = runner.measure(target, workload, conc, dataclasses.replace(settings, rate=rate),
                            rep, cpus, use_perf)
    bar.finish(record.wall_s)
    records.append(record)
    return record


def run_searches(order: list[tuple[int, str, int, Any]], settings: Any,
                 cpus: tuple[list[int], list[int]], use_perf: bool, bar: Any, key: str,
                 target_us: float, steps: int = DEFAULT_STEPS,
                 resolution: float = DEFAULT_RESOLUTION,
                 ) -> tuple[list[Run], list[dict[str, Any]]]:
    """``--slo``: a search per (workload, concurrency, server) of the plan, each probe a
    fresh server measured by :func:`bench.runner.measure`.

    Returns (the closed-loop run records, for the usual tables; the searches, each with
    server, workload and concurrency, and ``wall_s`` of its open-loop runs). A server
    that is skipped or n/a gets its record and no search."""
    import functools

    from bench import runner

    runs: list[Run] = []
    searches: list[dict[str, Any]] = []
    gave_up: dict[str, Run] = {}
    try:
        for rep, workload, conc, target in order:
            if target.name in gave_up:
                record = runner.empty_record(target, workload, conc, rep)
                record.status, record.reason = Status.SKIPPED, gave_up[target.name].reason
                runs.append(record)
                bar.finish(0.0, ran=False)
                continue
            records: list[Run] = []
            probe = functools.partial(_probe, target=target, workload=workload, conc=conc,
                                      rep=rep, settings=settings, cpus=cpus,
                                      use_perf=use_perf, bar=bar, records=records)
            found = search(probe, key, target_us, steps, resolution)
            runs.append(records[0])
            if records[0].status in NOT_RUN:
                if records[0].status == Status.SKIPPED:
                    gave_up[target.name] = records[0]
                continue
            found.update(server=target.name, workload=workload, concurrency=conc,
                         arrivals=settings.arrivals, seed=settings.seed,
                         resolution_asked=resolution,
                         wall_s=sum(r.wall_s for r in records[1:]))
            searches.append(found)
    except KeyboardInterrupt:
        bar.note("bench: interrupted; writing what was measured")
    finally:
        bar.close()
    return runs, searches
