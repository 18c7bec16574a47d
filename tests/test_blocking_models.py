"""The launch contract around the backends (#14): ``validate`` and ``prepare`` leave the
parsed flags exactly as the user gave them, and the thread pool's size (threadpool,
prefork) is derived from ``--threads`` and ``--queue`` with the queue defaulting to
the thread count.

And how the blocking driver bounds a send, on each way of bounding it (kernel
timeouts: threaded; gevent's one timer a connection; iterative, whose sends also
watch the stop): a peer that stops reading is dropped about ``--idle-timeout``
after the last progress, and one that reads slowly but steadily is served a
response that takes several idle timeouts to leave (that one, for every server that
serves files: tests/test_file_stall.py).
"""

from __future__ import annotations

import importlib
import select
import socket
import time

import pytest

from servers.backend import Backend, Unavailable, UsageError
from servers.cli import build_parser, settings_from
from servers.drivers.thread_pool import PoolSize, pool_size
from servers.registry import BY_NAME, Entry
from tests.servers import ids, running_server, user_space_entries

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


BOUNDED = ["threaded", "gevent", "iterative"]
IDLE = 1.0


@pytest.mark.parametrize("name", BOUNDED)
def test_peer_that_stops_reading_is_dropped_an_idle_timeout_after_the_last_progress(
        name: str) -> None:
    with running_server(name, "echo", "--idle-timeout", str(IDLE)) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(server.address)
        sock.setblocking(False)
        chunk = b"s" * 65536
        give_up = time.monotonic() + 20
        while True:  # send, never read, until the server stops taking our bytes
            try:
                sock.send(chunk)
            except BlockingIOError:
                break
            assert time.monotonic() < give_up, "the server never stopped reading"
        stalled = time.monotonic()
        # The server now blocks in a send that cannot progress; closing the connection
        # (with our bytes unread) resets it, which hangs up our side.
        poller = select.poll()
        poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        events = poller.poll(10_000)
        dropped = time.monotonic() - stalled
        sock.close()
        assert events, "the connection was still open 10 s after the peer stopped reading"
        assert IDLE * 0.5 <= dropped <= IDLE + 3.0, f"dropped {dropped:.2f} s after the stall"
