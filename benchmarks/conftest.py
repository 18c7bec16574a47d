"""Fixtures for ``pytest benchmarks --benchmark-only``: one running server per param.

Each (server, workload) param starts its server once, through the registry argv
and pinned to the server's cores (:mod:`bench.runner`), and stops it after the
module (a server that does not stop cleanly gives a warning); a kernel entry
that cannot load its module here (exit status 3) is skipped with its reason.
The sizes can be changed through the environment:
``ZOO_BENCH_REQUESTS`` (requests per round, default 10000),
``ZOO_BENCH_ROUNDS`` (default 5) and ``ZOO_BENCH_CONCURRENCY`` (default 50;
servers that serve one client at a time get 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from bench import runner
from servers.cli import raise_descriptor_limit
from servers.registry import ENTRIES

WORKLOADS = ("echo", "http")


def pytest_configure() -> None:
    raise_descriptor_limit()


def params() -> list[pytest.param]:  # type: ignore[valid-type]
    """(target, workload) for every registry entry and the workloads it speaks."""
    out = []
    for entry in ENTRIES:
        target = runner.Target(entry.name, tuple(entry.argv), entry.kind,
                               tuple(entry.protocols), entry.concurrent)
        for workload in WORKLOADS:
            if runner.protocol_of(workload) in entry.protocols:
                out.append(pytest.param((target, workload), id=f"{entry.name}-{workload}"))
    return out


@pytest.fixture(scope="module", params=params())
def zoo_server(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[runner.Server, runner.Target, str]]:
    """A started server for one (target, workload); stopped (and checked) afterwards."""
    target, workload = request.param
    server_cpus, _ = runner.split_cpus()
    try:
        server = runner.start_server(target, runner.protocol_of(workload), runner.Settings(),
                                     server_cpus)
    except runner.StartFailure as exc:
        if exc.skipped:
            pytest.skip(f"{target.name}: {exc.reason}")
        pytest.fail(f"{target.name} did not start: {exc.reason}")
    try:
        yield server, target, workload
    finally:
        outcome = server.stop()
    if outcome != "clean":  # the numbers stand; the conformance suite owns clean stops
        warnings.warn(f"{target.name} ({workload}) did not stop cleanly: {outcome}",
                      stacklevel=1)
