"""The pytest-benchmark suite's configuration: when benchmarks run, and their servers.

``pyproject.toml`` lists ``tests`` and ``benchmarks`` in ``testpaths``, so one
configuration serves both commands, each doing what its words say:

- ``pytest`` runs the test suites; every benchmark is skipped at collection (a
  skip mark, so no benchmark fixture runs and no server starts), with a reason
  that names the command which runs it;
- ``pytest --benchmark-only`` runs the benchmarks and nothing else (the other
  tests are deselected);
- benchmarks also run when asked for by ``--benchmark-enable`` or by naming
  ``benchmarks/`` (or a file or test in it) on the command line; ``--benchmark-skip``
  always skips them.

``test_loadgen_ceiling.py`` (the proof that the load generator is not the
bottleneck, about a minute, sensitive to other load) and ``test_overhead.py``
(each backend against a minimal server of its model, about 80 s) are collected
only when named on the command line: ``pytest benchmarks/test_loadgen_ceiling.py``.

Workloads: ``echo`` and ``http`` for every server that speaks them, and
``guestbook`` (GET /guestbook, no backend wait) for every server with a guestbook,
against one private ``redis-server`` started for the session when the first
guestbook benchmark runs (skipped with the reason if none can start). Each
(server, workload) param starts its server once, through the registry argv
and pinned to the server's cores (:mod:`bench.runner`), and stops it after the
module (a server that does not stop cleanly gives a warning). A server this
machine cannot run is skipped with its reason: a kernel entry that cannot load
its module here (exit status 3), with the command that runs it in the QEMU
guest; a backend whose start-up probe refuses (``cannot start:``, e.g. no
io_uring). The sizes can be changed through the environment:
``ZOO_BENCH_REQUESTS`` (requests per round, default 4000),
``ZOO_BENCH_GUESTBOOK_REQUESTS`` (the same for the guestbook, default 500),
``ZOO_BENCH_ROUNDS`` (measured rounds, default 5, after one warm-up round) and
``ZOO_BENCH_CONCURRENCY`` (default 50; servers that serve one client at a time
get 1). With these defaults the whole run takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import redis, runner
from servers.cli import raise_descriptor_limit
from servers.registry import BY_NAME, ENTRIES

WORKLOADS = ("echo", "http", "guestbook")
HERE = Path(__file__).resolve().parent
CEILING = HERE / "test_loadgen_ceiling.py"
NAMED_ONLY = (CEILING, HERE / "test_overhead.py")
RUN_HINT = "a benchmark: runs with `pytest --benchmark-only`"
GUEST_COMMAND = (".venv/bin/python -m bench.vm run -- "
                 ".venv/bin/python -m pytest --benchmark-only '{nodeid}'")


def pytest_configure() -> None:
    raise_descriptor_limit()


def _named_paths(config: pytest.Config) -> list[Path]:
    """The paths given on the command line (not those that come from ``testpaths``)."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return []
    base = config.invocation_params.dir
    return [(base / arg.split("::", 1)[0]).resolve() for arg in config.args]


def benchmarks_requested(config: pytest.Config) -> bool:
    """Did this command ask for benchmarks (see the module docstring)?"""
    if config.getoption("benchmark_only", False):
        return True
    if config.getoption("benchmark_skip", False):
        return False
    if config.getoption("benchmark_enable", False):
        return True
    return any(path == HERE or HERE in path.parents for path in _named_paths(config))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the measurement campaigns (NAMED_ONLY) out unless they are named."""
    path = collection_path.resolve()
    if path in NAMED_ONLY and path not in _named_paths(config):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip benchmarks unless asked for; with --benchmark-only, deselect the rest."""
    def is_benchmark(item: pytest.Item) -> bool:
        return "benchmark" in getattr(item, "fixturenames", ())

    if config.getoption("benchmark_only", False):
        others = [item for item in items if not is_benchmark(item)]
        if others:
            config.hook.pytest_deselected(items=others)
            items[:] = [item for item in items if is_benchmark(item)]
    elif not benchmarks_requested(config):
        skip = pytest.mark.skip(reason=RUN_HINT)
        for item in items:
            if is_benchmark(item):
                item.add_marker(skip)


def cases() -> list[tuple[str, str]]:
    """(server, workload) for every registry entry and the workloads it serves."""
    return [(entry.name, workload) for entry in ENTRIES for workload in WORKLOADS
            if runner.protocol_of(workload) in entry.protocols
            and (workload != "guestbook" or entry.guestbook)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``server`` and ``workload`` (module scope: one server per pair), so
    that ``--benchmark-group-by=param:workload`` and ``param:server`` work."""
    if {"server", "workload"} <= set(metafunc.fixturenames):
        pairs = cases()
        metafunc.parametrize(("server", "workload"), pairs, scope="module",
                             ids=[f"{name}-{workload}" for name, workload in pairs])


@pytest.fixture(scope="session")
def zoo_redis() -> Iterator[redis.RedisAddr]:
    """A private redis-server for the guestbook benchmarks (skipped if none starts)."""
    try:
        private = redis.PrivateRedis()
    except redis.RedisError as exc:
        pytest.skip(f"guestbook: {exc}")
    try:
        private.start()
    except (redis.RedisError, OSError) as exc:
        private.close()
        pytest.skip(f"guestbook: no Redis: {exc}")
    try:
        yield private.addr
    finally:
        private.close()


@pytest.fixture(scope="module")
def zoo_server(
    request: pytest.FixtureRequest, server: str, workload: str,
) -> Iterator[tuple[runner.Server, runner.Target, str]]:
    """A started server for one (server, workload); stopped (and checked) afterwards."""
    entry = BY_NAME[server]
    target = runner.Target(entry.name, tuple(entry.argv), entry.kind, tuple(entry.protocols),
                           entry.concurrent, guestbook=bool(entry.guestbook))
    settings = runner.Settings()
    if workload == "guestbook":
        settings = runner.Settings(redis=str(request.getfixturevalue("zoo_redis")))
    extra, why = runner.app_args(target, workload, settings)
    if extra is None:
        pytest.skip(f"{server}: {why}")
    server_cpus, _ = runner.split_cpus()
    try:
        started = runner.start_server(target, runner.protocol_of(workload), settings,
                                      server_cpus, extra=extra)
    except runner.StartFailure as exc:
        if exc.skipped and entry.kind == "kernel":
            nodeid = f"benchmarks/test_zoo.py::test_zoo[{server}-{workload}]"
            pytest.skip(f"{server}: {exc.reason}; in the QEMU guest: "
                        + GUEST_COMMAND.format(nodeid=nodeid))
        if exc.skipped:
            pytest.skip(f"{server}: {exc.reason}")
        pytest.fail(f"{server} did not start: {exc.reason}")
    try:
        yield started, target, workload
    finally:
        outcome = started.stop()
    if outcome != "clean":  # the numbers stand; the conformance suite owns clean stops
        warnings.warn(f"{server} ({workload}) did not stop cleanly: {outcome}", stacklevel=1)
