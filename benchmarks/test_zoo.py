"""pytest-benchmark benchmarks: every server of the registry, echo, HTTP and guestbook.

Run with ``pytest --benchmark-only`` from the repository root (about 2 minutes on
2 cores; plain ``pytest`` skips them, see ``conftest.py``). Each round sends a
fixed number of requests through the native load generator, run as a pinned
subprocess on the client cores; the timed figure is the round's wall time (it
includes ~0.1 s of load generator start-up, the same for every server), and
``extra_info`` holds the load generator's own requests/s and latency percentiles
(medians over the rounds) so that ``--benchmark-json``, ``--benchmark-compare``
and saved runs (``--benchmark-autosave``) carry them. Benchmarks are grouped by workload
(``benchmark.group``); ``--benchmark-group-by=param:workload`` or ``param:server``
regroup them.

For the workloads in ``ZOO_BENCH_SLO_WORKLOADS`` (default ``http``; empty: none),
``extra_info["capacity_rps"]`` also holds the server's capacity at the latency target
``ZOO_BENCH_SLO`` (default ``p99=5ms``): the highest open-loop rate (Poisson arrivals)
whose percentile stays within it, found by :func:`bench.capacity.search` against the
running server (one closed-loop and at most 6 open-loop runs of 0.5 s, about 6 s a
server), with ``capacity_bracket`` and ``capacity_target``; None when no rate met it.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any

from bench import capacity, runner
from bench.records import LATENCY_KEYS, Run, Status

# The default size (see conftest.py): about 2 minutes for the whole zoo on 2 cores.
DEFAULT_REQUESTS = 4000
DEFAULT_GUESTBOOK_REQUESTS = 500  # each one waits on a Redis round trip
DEFAULT_ROUNDS = 5
DEFAULT_CONCURRENCY = 50
DEFAULT_SLO = "p99=5ms"
DEFAULT_SLO_WORKLOADS = "http"
SLO_PROBE = runner.Settings(duration=0.5, warmup=0.1, timeout=2.0)


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment, or ``default``."""
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def test_zoo(benchmark: Any, zoo_server: tuple[runner.Server, runner.Target, str]) -> None:
    """One (server, workload): fixed-size rounds of the load generator, timed."""
    server, target, workload = zoo_server
    if workload == "guestbook":
        requests = env_int("ZOO_BENCH_GUESTBOOK_REQUESTS", DEFAULT_GUESTBOOK_REQUESTS)
    else:
        requests = env_int("ZOO_BENCH_REQUESTS", DEFAULT_REQUESTS)
    rounds = env_int("ZOO_BENCH_ROUNDS", DEFAULT_ROUNDS)
    connections = env_int("ZOO_BENCH_CONCURRENCY", DEFAULT_CONCURRENCY) if target.concurrent else 1
    _, client_cpus = runner.split_cpus()
    settings = runner.Settings(warmup=0.0, timeout=5.0)
    argv = runner.loadgen_argv(server.host, server.port, workload, connections, settings,
                               threads=len(client_cpus), duration=30.0, requests=requests)
    results: list[dict[str, Any]] = []

    def one_round() -> None:
        proc = runner.start_loadgen(argv, client_cpus)
        result, problem, _ = runner.finish_loadgen(proc, 60.0)
        assert result is not None, problem
        results.append(result)

    benchmark.group = workload
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
    measured = results[1:] or results
    benchmark.extra_info.update({
        "server": target.name, "workload": workload, "connections": connections,
        "requests_per_round": requests,
        "requests_per_s": statistics.median(r["requests_per_s"] for r in measured),
        "latency_us": {k: statistics.median(r["latency_us"][k] for r in measured)
                       for k in LATENCY_KEYS},
        "errors_total": sum(r["errors_total"] for r in measured),
        "client_cpu_util": statistics.median(r["client_cpu_util"] for r in measured),
    })
    assert server.alive(), f"{target.name} died: {server.stderr_tail()}"
    assert benchmark.extra_info["errors_total"] == 0, benchmark.extra_info
    assert all(r["requests"] == requests for r in measured)
    slo_workloads = os.environ.get("ZOO_BENCH_SLO_WORKLOADS", DEFAULT_SLO_WORKLOADS)
    if workload in [w.strip() for w in slo_workloads.split(",")]:
        key, target_us = capacity.parse_slo(os.environ.get("ZOO_BENCH_SLO", DEFAULT_SLO))
        found = capacity.search(
            lambda rate: open_loop_probe(server, workload, connections, rate, client_cpus),
            key, target_us)
        benchmark.extra_info.update(capacity_rps=found["capacity_rps"],
                                    capacity_bracket=found["bracket"],
                                    capacity_target=f"{key}<={target_us:g}us")
        assert server.alive(), f"{target.name} died in the capacity search"


def open_loop_probe(server: runner.Server, workload: str, connections: int,
                    rate: float | None, client_cpus: list[int]) -> Run:
    """One run of the capacity search against the running server, as a run record."""
    settings = dataclasses.replace(SLO_PROBE, rate=rate)
    argv = runner.loadgen_argv(server.host, server.port, workload, connections, settings,
                               threads=len(client_cpus), duration=settings.duration)
    result, problem, status = runner.finish_loadgen(runner.start_loadgen(argv, client_cpus),
                                                    30.0)
    record = Run(server=f"{server.host}:{server.port}", workload=workload,
                 concurrency=connections, status=status, reason=problem)
    if result is not None:
        record.requests, record.requests_per_s = result["requests"], result["requests_per_s"]
        record.latency_us, record.errors_total = result["latency_us"], result["errors_total"]
        record.status = Status.ERRORS if result["errors_total"] else Status.OK
    return record
