"""The launch contract around the backends (#14): ``validate`` and ``prepare`` leave the
parsed flags exactly as the user gave them, and the thread pool's size (threadpool,
prefork) is derived from ``--threads`` and ``--queue`` with the queue defaulting to
the thread count."""

from __future__ import annotations

import importlib

import pytest

from servers.backend import Backend, Unavailable, UsageError
from servers.cli import build_parser, settings_from
from servers.drivers.thread_pool import PoolSize, pool_size
from servers.registry import BY_NAME, Entry
from tests.servers import ids, user_space_entries

ENTRIES = user_space_entries()


def _backend(entry: Entry) -> Backend:
    module = importlib.import_module(entry.module)
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, Backend)
             and value.__module__ == module.__name__]
    assert len(found) == 1, f"{entry.module}: expected one Backend class, found {found}"
    return found[0]()


@pytest.mark.parametrize("entry", ENTRIES, ids=ids(ENTRIES))
def test_validate_and_prepare_leave_the_flags_alone(entry: Entry) -> None:
    backend = _backend(entry)
    options = build_parser(backend).parse_args([*entry.args, "--proto", entry.protocols[0]])
    given = dict(vars(options))
    settings = settings_from(options, backend)
    backend.validate(settings, options)
    try:
        backend.prepare(settings, options)
    except (Unavailable, OSError):
        pass  # a probe that fails here is the machine's answer; the flags still must not move
    assert vars(options) == given


@pytest.mark.parametrize(("name", "argv", "size"), [
    ("threadpool", [], PoolSize(256, 256)),
    ("threadpool", ["--threads", "3"], PoolSize(3, 3)),
    ("threadpool", ["--threads", "3", "--queue", "1"], PoolSize(3, 1)),
    ("prefork", [], PoolSize(128, 128)),
    ("prefork", ["--queue", "7"], PoolSize(128, 7)),
])
def test_pool_size_from_the_flags(name: str, argv: list[str], size: PoolSize) -> None:
    options = build_parser(_backend(BY_NAME[name])).parse_args(argv)
    assert pool_size(options) == size
    assert options.queue == (None if "--queue" not in argv else size.queue)


@pytest.mark.parametrize(("argv", "message"), [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "2", "--queue", "-1"], "--queue must be at least 1, got -1"),
])
def test_pool_without_threads_or_queue_is_a_usage_error(argv: list[str], message: str) -> None:
    options = build_parser(_backend(BY_NAME["threadpool"])).parse_args(argv)
    with pytest.raises(UsageError, match=message):
        pool_size(options)
