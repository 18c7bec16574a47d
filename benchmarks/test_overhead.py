"""What our plumbing costs: each backend against a minimal server of the same model.

Run with ``pytest benchmarks/test_overhead.py -s`` (collected only when named, see
``conftest.py``; about 80 s on 2 cores). Every backend here and its minimal
counterpart (``benchmarks/minimal/``: the model and nothing else, about 20 lines
each) serve echo ping-pong, 64 B, over 50 connections; each server is pinned to
its core and the native load generator to the other (:func:`bench.runner.measure`,
the harness's own run). The figure is server CPU µs per round trip; rounds are
interleaved (backend, then its minimal server, pair after pair, three times) so a
slow minute of a shared machine lands on both, and the table gives the medians,
their ratio and each side's spread (min-max over the rounds). ``ZOO_OVERHEAD_ROUNDS``
and ``ZOO_OVERHEAD_DURATION`` (seconds per run, default 1) change the size;
``ZOO_OVERHEAD_BACKENDS`` (names, comma-separated) measures only those backends.

The test fails when a run fails (errors, a server that dies); the ratios are
measurements, printed, not asserted: they swing with the load of a shared machine.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import pytest
from tabulate import tabulate

from bench import runner
from servers.registry import BY_NAME

MINIMAL = "benchmarks/minimal"
# backend -> (its minimal server's argv after python, what that server is)
PAIRS: dict[str, tuple[tuple[str, ...], str]] = {
    "trio": ((f"{MINIMAL}/trio_tasks.py",), "trio.serve_listeners, receive_some/send_all"),
    "threaded": ((f"{MINIMAL}/threaded.py",), "a thread per connection, recv/sendall"),
    "epoll": ((f"{MINIMAL}/selectors_loop.py",), "a selectors (epoll) loop"),
    "gevent": ((f"{MINIMAL}/gevent_greenlets.py",), "StreamServer, recv/sendall"),
    "asyncio": ((f"{MINIMAL}/asyncio_protocol.py", "--loop", "asyncio"),
                "asyncio BufferedProtocol"),
    "uvloop": ((f"{MINIMAL}/asyncio_protocol.py", "--loop", "uvloop"),
               "the same BufferedProtocol on uvloop"),
    "c-epoll": ((f"{MINIMAL}/c_epoll.py",), "a C epoll loop (cc -O2, built on first use)"),
}
CONNECTIONS = 50


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _backends() -> list[str]:
    value = os.environ.get("ZOO_OVERHEAD_BACKENDS")
    if value is None:
        return list(PAIRS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PAIRS]
    if unknown or not names:
        raise ValueError(f"ZOO_OVERHEAD_BACKENDS: {', '.join(unknown) or 'none given'} "
                         f"(known: {', '.join(PAIRS)})")
    return names


def _target(name: str) -> runner.Target:
    entry = BY_NAME[name]
    return runner.Target(entry.name, tuple(entry.argv), entry.kind, tuple(entry.protocols))


def _minimal(name: str) -> runner.Target:
    argv, _ = PAIRS[name]
    return runner.Target(f"minimal-{name}", argv, protocols=("echo",))


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def overhead_table(cpu: dict[str, dict[str, list[float]]]) -> list[list[Any]]:
    """Rows (backend, ours µs, spread, minimal µs, spread, ratio, minimal server)."""
    rows = []
    for name, (_, what) in PAIRS.items():
        if name not in cpu:
            continue
        ours, minimal = cpu[name]["ours"], cpu[name]["minimal"]
        ratio = statistics.median(ours) / statistics.median(minimal)
        rows.append([name, f"{statistics.median(ours):.1f}", _spread(ours),
                     f"{statistics.median(minimal):.1f}", _spread(minimal),
                     f"{ratio:.2f}x", what])
    return rows


def test_overhead(capsys: pytest.CaptureFixture[str]) -> None:
    """Every backend and its minimal server, interleaved; prints the ratio table."""
    rounds = _int_env("ZOO_OVERHEAD_ROUNDS", 3)
    duration = float(_int_env("ZOO_OVERHEAD_DURATION", 1))
    settings = runner.Settings(duration=duration, warmup=0.25)
    cpus = runner.split_cpus()
    cpu: dict[str, dict[str, list[float]]] = {name: {"ours": [], "minimal": []}
                                              for name in _backends()}
    for repeat in range(rounds):
        for name in cpu:
            sides = [("ours", _target(name)), ("minimal", _minimal(name))]
            if repeat % 2:
                sides.reverse()  # neither side always runs first
            for side, target in sides:
                record = runner.measure(target, "echo", CONNECTIONS, settings, repeat,
                                        cpus=cpus, use_perf=False)
                assert record.status == "ok", (target.name, record.status, record.reason)
                cpu[name][side].append(record.cpu_us_per_req)
    table = tabulate(overhead_table(cpu), headers=[
        "backend", "ours µs/rt", "spread", "minimal µs/rt", "spread", "ratio",
        "minimal server"])
    with capsys.disabled():
        print(f"\nserver CPU per echo round trip (64 B, {CONNECTIONS} connections, "
              f"median of {rounds} interleaved rounds)\n{table}")
