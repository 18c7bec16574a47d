"""What is particular to the process, pool, greenlet and io_uring backends.

prefork replaces a killed worker; forking leaves no zombie and a crashed child
costs only its connection; threadpool leaves the surplus clients waiting in
the backlog, then serves them; importing the servers never monkey-patches;
io_uring probes the kernel and fails with one clear line; ``--workers 2``
works for every event-driven backend.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from servers.registry import ENTRIES
from tests.clients import recv_exactly
from tests.servers import REPO, RunningServer, ids, running_server, user_space_entries

EVENT_DRIVEN = [e for e in user_space_entries(event_driven=True) if "echo" in e.protocols]


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll ``condition`` until true or ``timeout`` passes; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return condition()


def echo_once(server: RunningServer, message: bytes = b"ping\n") -> None:
    with server.connect(timeout=5) as sock:
        sock.sendall(message)
        assert recv_exactly(sock, len(message), timeout=5) == message


def children(server: RunningServer) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children()


def live(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def zombies(server: RunningServer) -> list[psutil.Process]:
    out = []
    for proc in children(server):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


# -- prefork ------------------------------------------------------------------------------


def test_prefork_replaces_a_killed_worker_within_a_second() -> None:
    with running_server("prefork", "echo", "--workers", "2") as server:
        before = live(children(server))
        assert len(before) == 2
        victim = before[0]
        victim.kill()
        killed_at = time.monotonic()

        def replaced() -> bool:
            now = live(children(server))
            return len(now) == 2 and victim.pid not in {p.pid for p in now}

        assert wait_for(replaced, 1.0), [p.pid for p in children(server)]
        assert time.monotonic() - killed_at < 1.0
        for i in range(20):
            echo_once(server, b"after %d\n" % i)
        assert server.stop() == 0
        assert not server.leftovers()


# -- forking ------------------------------------------------------------------------------


def test_forking_leaves_no_zombie() -> None:
    with running_server("forking", "echo") as server:
        for i in range(30):
            echo_once(server, b"one by one %d\n" % i)
        socks = [server.connect(timeout=5) for _ in range(20)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(b"together %d\n" % i)
            for i, sock in enumerate(socks):
                expected = b"together %d\n" % i
                assert recv_exactly(sock, len(expected)) == expected
        finally:
            for sock in socks:
                sock.close()
        # Every client has gone: every child exits and is reaped.
        assert wait_for(lambda: not children(server), 5.0), \
            [(p.pid, p.status()) for p in children(server)]
        assert not zombies(server)


def test_forking_crashed_child_costs_only_its_connection() -> None:
    with running_server("forking", "echo") as server:
        with server.connect(timeout=5) as doomed, server.connect(timeout=5) as other:
            doomed.sendall(b"a\n")
            other.sendall(b"b\n")
            assert recv_exactly(doomed, 2) == b"a\n"
            assert recv_exactly(other, 2) == b"b\n"
            kids = live(children(server))
            assert len(kids) == 2
            # The child serving ``doomed`` is the one with its peer port among its sockets.
            port = doomed.getsockname()[1]
            victim = next(p for p in kids
                          if any(c.raddr and c.raddr[1] == port for c in p.net_connections()))
            victim.kill()
            doomed.settimeout(5)
            try:
                assert doomed.recv(10) == b""
            except ConnectionResetError:
                pass
            other.sendall(b"still\n")
            assert recv_exactly(other, 6) == b"still\n"
            echo_once(server)
        assert wait_for(lambda: not zombies(server) and len(children(server)) == 0, 5.0)


# -- threadpool ---------------------------------------------------------------------------


def test_threadpool_full_leaves_clients_in_the_backlog_then_serves_them() -> None:
    """Two threads, a queue of one: the 5th..7th clients are neither served nor refused
    while the first two hold the threads; the server holds at most threads + queue + 1
    (the one in the acceptor's hand) accepted sockets; all are served once threads free."""
    with running_server("threadpool", "echo", "--threads", "2", "--queue", "1") as server:
        busy = [server.connect(timeout=5) for _ in range(2)]
        waiting: list[socket.socket] = []
        try:
            for i, sock in enumerate(busy):
                sock.sendall(b"busy %d\n" % i)
                assert recv_exactly(sock, 7) == b"busy %d\n" % i
            waiting = [server.connect(timeout=5) for _ in range(5)]
            for i, sock in enumerate(waiting):
                sock.sendall(b"wait %d\n" % i)
            # Not served while the pool is taken (bounded wait for an answer that must not come).
            waiting[-1].settimeout(0.5)
            with pytest.raises(TimeoutError):
                waiting[-1].recv(16)
            proc = psutil.Process(server.proc.pid)
            accepted = [c for c in proc.net_connections(kind="tcp")
                        if c.status == psutil.CONN_ESTABLISHED]
            assert len(accepted) <= 2 + 1 + 1, accepted
            for sock in busy:
                sock.close()
            for i, sock in enumerate(waiting):
                expected = b"wait %d\n" % i
                # Served once the pool frees up: not refused, not reset.
                assert recv_exactly(sock, len(expected), timeout=10) == expected
                sock.close()
        finally:
            for sock in busy + waiting:
                sock.close()


# -- no monkey-patching on import ---------------------------------------------------------


def test_importing_servers_does_not_monkey_patch() -> None:
    modules = sorted({e.module for e in ENTRIES if e.kind == "python"})
    code = (
        "import importlib, socket, threading, time\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import gevent.monkey\n"
        "assert not gevent.monkey.is_anything_patched(), 'patched'\n"
        "assert socket.socket.__module__ == 'socket', socket.socket\n"
        "assert threading.Lock.__module__ in ('_thread', 'threading'), threading.Lock\n"
        "assert time.sleep.__module__ == 'time', time.sleep\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"clean"


# -- io_uring -----------------------------------------------------------------------------


def io_uring_unavailable() -> str | None:
    """The reason io_uring cannot run here, or None."""
    from servers.backend import Unavailable
    from servers.io_uring_srv import probe

    try:
        probe()
    except Unavailable as exc:
        return str(exc)
    return None


def test_io_uring_probe_reports_features_or_skips() -> None:
    reason = io_uring_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from servers.io_uring_srv import probe

    features = probe()
    assert set(features) == {"multishot_accept", "multishot_recv"}


# The io_uring backend on a machine without its binding: ``import uring_api`` fails there
# exactly as it does when the setting ``sys.modules["uring_api"] = None`` makes it fail here.
NO_BINDING = ("-c", "import runpy, sys; sys.modules['uring_api'] = None; "
              "runpy.run_module('servers.io_uring_srv', run_name='__main__')")


def test_io_uring_without_its_binding_is_skipped_not_failed() -> None:
    """One meaning of "cannot run here": the launcher's exit status and line, the harness's
    "skipped" status and the tests' skip all come from :class:`servers.backend.Unavailable`."""
    from bench import runner
    from servers.backend import EXIT_UNAVAILABLE, unavailable_reason

    proc = subprocess.run([sys.executable, *NO_BINDING, "--proto", "http", "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    lines = proc.stderr.strip().splitlines()  # one line, no traceback
    assert len(lines) == 1 and lines[0].startswith(
        "skipped: io_uring: io_uring binding not installed"), lines
    assert "listening on" not in proc.stdout
    reason = unavailable_reason(proc.returncode, proc.stderr)
    assert reason is not None and reason.startswith("io_uring: io_uring binding not installed")

    record = runner.measure(runner.Target("io_uring", NO_BINDING), "http", 1,
                            runner.Settings(duration=0.2, warmup=0.0))
    assert record.status == "skipped" and record.reason == reason, record


@pytest.mark.parametrize("mode", ["single", "multishot"])
def test_io_uring_recv_modes_echo(mode: str) -> None:
    reason = io_uring_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with running_server("io_uring", "echo", "--recv", mode) as server:
        data = bytes(range(256)) * 16384  # 4 MiB: many completions, buffers reused
        with server.connect() as sock:
            sender = threading.Thread(target=sock.sendall, args=(data,))
            sender.start()
            try:
                assert recv_exactly(sock, len(data), timeout=30) == data
            finally:
                sender.join(30)
        for i in range(20):
            echo_once(server, b"mode %s %d\n" % (mode.encode(), i))
        assert server.stop() == 0


# -- --workers 2 for the event-driven backends --------------------------------------------


@pytest.mark.parametrize("entry", EVENT_DRIVEN, ids=ids(EVENT_DRIVEN))
def test_two_workers_serve_and_stop_cleanly(entry: object) -> None:
    with running_server(entry, "echo", "--workers", "2") as server:  # type: ignore[arg-type]
        workers = live(children(server))
        assert len(workers) == 2
        socks = [server.connect(timeout=5) for _ in range(40)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(b"worker test %d\n" % i)
            for i, sock in enumerate(socks):
                expected = b"worker test %d\n" % i
                assert recv_exactly(sock, len(expected)) == expected
            # Both workers hold connections: the kernel spread them over the two listeners.
            holding = [w for w in workers
                       if any(c.status == psutil.CONN_ESTABLISHED
                              for c in w.net_connections(kind="tcp"))]
            assert len(holding) == 2, "one worker got all 40 connections"
        finally:
            for sock in socks:
                sock.close()
        code = server.stop(signal.SIGTERM, timeout=3.0)
        assert code == 0, server.stderr_text()
        assert not server.leftovers()
