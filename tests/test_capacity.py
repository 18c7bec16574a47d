"""The capacity search (``--slo``, bench.capacity) as a measuring instrument.

The search itself is checked against synthetic servers whose latency curve is known
(bounded steps, the stated resolution, infeasible targets), the M/D/1 formula against a
simulation of the queue, and the whole chain (load generator, Poisson arrivals, runner,
search) against the faulty test server with a known service time, where queueing
theory says what the capacity must be.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

from bench import capacity, loadgen, runner
from bench.records import Run, Status

LOADGEN_PROBLEM = loadgen.native_problem()
needs_loadgen = pytest.mark.skipif(LOADGEN_PROBLEM is not None, reason=LOADGEN_PROBLEM or "")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "faulty_server.py")


def simulated_md1_p99(rate: float, service_s: float, customers: int, seed: int) -> float:
    """The sojourn p99 of a simulated M/D/1 queue (Lindley's recursion: each customer
    waits for what is left of the one before it)."""
    rng = random.Random(seed)
    wait, sojourns = 0.0, []
    for _ in range(customers):
        gap = rng.expovariate(rate)
        wait = max(0.0, wait + service_s - gap)
        sojourns.append(wait + service_s)
    sojourns.sort()
    return sojourns[int(0.99 * len(sojourns))]


def test_md1_formula_matches_a_simulated_queue() -> None:
    service = 0.002
    for rho in (0.2, 0.3195, 0.5):
        formula = capacity.theoretical_md1_p99(rho / service, service)
        simulated = simulated_md1_p99(rho / service, service, 200_000, seed=7)
        assert abs(formula / simulated - 1) < 0.03, (rho, formula, simulated)
    # the known point: p99 = 3 S at a utilisation of 0.3195
    assert capacity.md1_capacity(service, 3 * service) * service == pytest.approx(0.3195,
                                                                                  abs=1e-3)


def probe_run(rps: float, p99: float, status: Status = Status.OK, errors: int = 0) -> Run:
    """A probe's record: ``rps`` answered, ``p99`` us."""
    return Run(server="synthetic", workload="echo", concurrency=10, status=status,
               requests=1000, requests_per_s=rps, latency_us={"p99": p99},
               errors_total=errors)


def synthetic(threshold: float, peak: float, calls: list[float | None]):  # type: ignore[no-untyped-def]
    """A server whose p99 is 1 ms below ``threshold`` req/s and 50 ms above."""

    def probe(rate: float | None) -> Run:
        calls.append(rate)
        served = peak if rate is None else min(rate, peak)
        p99 = 50_000 if rate is None or rate > threshold else 1_000
        return probe_run(served, p99)

    return probe


@pytest.mark.parametrize("threshold", [700.0, 3_000.0, 9_000.0, 9_900.0])
def test_search_finds_the_threshold_within_its_resolution_and_budget(threshold: float) -> None:
    calls: list[float | None] = []
    found = capacity.search(synthetic(threshold, 10_000.0, calls), "p99", 2_000, steps=8,
                            resolution=0.1)
    assert len(calls) <= 1 + 8 and calls[0] is None
    assert found["feasible"]
    low, high = found["bracket"]
    assert low == found["capacity_rps"] <= threshold < high
    assert high / low <= 1.1 + 1e-9, found["bracket"]


def test_search_raises_the_rate_when_the_peak_itself_meets_the_target() -> None:
    calls: list[float | None] = []
    found = capacity.search(synthetic(1e9, 10_000.0, calls), "p99", 2_000, steps=3)
    assert found["feasible"] and found["bracket"][1] is None
    assert found["capacity_rps"] == pytest.approx(10_000 * 1.5**2)
    assert len(calls) == 4


def test_an_infeasible_target_reports_the_lowest_percentile_seen() -> None:
    def probe(rate: float | None) -> Run:
        return probe_run(1000.0, 9_000 + (rate or 0))

    found = capacity.search(probe, "p99", 5_000, steps=5)
    assert not found["feasible"] and found["capacity_rps"] is None
    assert found["lowest"] == pytest.approx(9_000 + 1000 / 2**4)
    assert "no rate" in found["reason"]


def test_errors_never_meet_the_target() -> None:
    assert capacity.meets(probe_run(100.0, 10), "p99", 1_000)
    assert not capacity.meets(probe_run(100.0, 10, Status.ERRORS, errors=3), "p99", 1_000)


def test_parse_slo() -> None:
    assert capacity.parse_slo("p99=2ms") == ("p99", 2000.0)
    assert capacity.parse_slo("p999=1.5s") == ("p999", 1.5e6)
    assert capacity.parse_slo("P50=250us") == ("p50", 250.0)
    for bad in ("p99", "p98=2ms", "p99=2", "p99=-1ms", "p99=ms", "p99=2 hours", "p99=0ms"):
        with pytest.raises(ValueError):
            capacity.parse_slo(bad)


def test_bad_slo_flags_exit_2() -> None:
    for argv in (["--slo", "p99=fast"], ["--slo", "p99=2ms", "--ci", "5%"],
                 ["--ci", "five"], ["--ci", "0%"], ["--arrivals", "bursty"]):
        done = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True,
                              text=True, timeout=30, cwd=runner.REPO)
        assert done.returncode == 2, (argv, done.stderr)
        assert "error" in done.stderr, done.stderr


@needs_loadgen
def test_capacity_of_a_known_service_time_matches_md1() -> None:
    """Capacity for p99 = 3 S against a server that takes S per request.

    The faulty server (--mode delay) gives each connection its own thread that sleeps S
    per request, and the load generator keeps one request in flight per connection with
    Poisson arrivals counted from their due times: every connection is an M/D/1 queue
    (Poisson in, a deterministic service of S, one server), independent of the others.
    With C connections the p99 over all of them is the p99 of one, and C of them give C
    times the samples of one connection in the same time: near the capacity one
    connection answers 0.32 / S requests a second, too few for a p99 in a few seconds
    (300 answers give a p99 that varies by ~8%, and the capacity moves twice as much);
    32 connections give ~3,000 a run (~3%).

    S is 10 ms so that the scheduling delays of a shared 2-core machine (a woken thread
    may wait a few ms for its core) stay small beside it: they are what makes a real
    service time not quite deterministic.

    For M/D/1 the sojourn p99 reaches 3 S at a utilisation of 0.3195
    (:func:`bench.capacity.theoretical_md1_p99`, checked against a simulated queue above),
    so the capacity is C * 0.3195 / S_eff, where S_eff = C / (closed-loop peak) is the
    service time as served (the sleep plus Python's and the loopback's share, measured
    by the search's own first run). The search's answer, the lower end of a bracket at
    most 10% wide, must lie within 20% of it.
    """
    service_ms, connections = 10.0, 32
    target = runner.Target("faulty-delay", (FIXTURE, "--mode", "delay", "--delay-ms",
                                            f"{service_ms:g}"), protocols=("echo",))
    settings = runner.Settings(duration=3.0, warmup=0.3, timeout=5.0, arrivals="poisson",
                               seed=12)

    def probe(rate: float | None) -> Run:
        import dataclasses

        return runner.measure(target, "echo", connections,
                              dataclasses.replace(settings, rate=rate), use_perf=False)

    found = capacity.search(probe, "p99", 3 * service_ms * 1000, steps=7, resolution=0.1)
    assert found["feasible"], found
    service_eff = connections / found["peak_rps"]
    assert service_ms / 1000 <= service_eff < 1.5 * service_ms / 1000, found["peak_rps"]
    expected = connections * capacity.md1_capacity(service_eff, 3 * service_ms / 1000)
    assert math.isclose(found["capacity_rps"], expected, rel_tol=0.2), (
        f"capacity {found['capacity_rps']:.0f} req/s, M/D/1 says {expected:.0f}; "
        f"probes {found['probes']}")


def arrivals_run(arrivals: str, seed: int) -> Run:
    """Open loop at 1,000 req/s for 1.5 s over 4 connections against a server that
    answers at once: every request due in the window is sent and answered."""
    target = runner.Target("faulty-delay0", (FIXTURE, "--mode", "delay", "--delay-ms", "0"),
                           protocols=("echo",))
    settings = runner.Settings(duration=1.5, warmup=0.2, timeout=5.0, rate=1000.0,
                               arrivals=arrivals, seed=seed)
    record = runner.measure(target, "echo", 4, settings, use_perf=False)
    assert record.status == "ok", record
    return record


@needs_loadgen
def test_arrivals_are_seeded_poisson_or_uniform() -> None:
    """The count of requests due in the window is fixed by the arrival times alone: the
    uniform schedule gives rate x duration, a Poisson one a count that varies from seed
    to seed like a Poisson variable (standard deviation ~39 here) and repeats exactly
    (give or take one at either end of the window) with the same seed."""
    uniform = arrivals_run("uniform", 1).requests
    assert abs(uniform - 1500) <= 4, uniform
    first, again = (arrivals_run("poisson", 5).requests for _ in range(2))
    assert abs(first - again) <= 2, (first, again)
    assert abs(first - 1500) < 5 * math.sqrt(1500), first
    others = [arrivals_run("poisson", seed).requests for seed in (6, 7)]
    assert any(abs(other - first) > 2 for other in others), (first, others)
