"""bench.server_process, the one way the harness and the tests run a server: against
small real processes that announce themselves, refuse, fail, stay silent, ignore
SIGTERM or leave a child behind. Every case is bounded; together about 2 s."""

from __future__ import annotations

import os
import socket
import sys
import time

import psutil
import pytest

from bench import server_process
from bench.server_process import StartFailure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Listens, announces the wildcard address, exits 0 on SIGTERM.
SERVES = """
import signal, socket
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
s = socket.create_server(("127.0.0.1", 0))
print(f"listening on 0.0.0.0:{s.getsockname()[1]}", flush=True)
signal.sigwait([signal.SIGTERM])
"""
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("listening on 127.0.0.1:9", flush=True)
time.sleep(60)
"""
# Announces, then on SIGTERM exits 0 while the child it forked sleeps on.
LEAVES_CHILD = """
import os, signal, time
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
print("listening on 127.0.0.1:9", flush=True)
signal.sigwait([signal.SIGTERM])
"""
# Fails before announcing; its child keeps the stdout pipe open.
DIES_CHILD_HOLDS_STDOUT = """
import os, sys, time
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("cannot bind", file=sys.stderr, flush=True)
sys.exit(1)
"""


def start(script: str, ready_timeout: float = 10.0) -> server_process.ServerProcess:
    return server_process.start([sys.executable, "-c", script], ready_timeout=ready_timeout,
                                cwd=REPO, name="test")


def failure(script: str, ready_timeout: float = 10.0) -> StartFailure:
    with pytest.raises(StartFailure) as caught:
        start(script, ready_timeout)
    return caught.value


def test_ready_line_gives_the_address_and_sigterm_is_a_clean_stop() -> None:
    server = start(SERVES)
    assert server.address[0] == "127.0.0.1" and server.port > 0  # 0.0.0.0 as loopback
    socket.create_connection(server.address, timeout=5).close()
    assert server.stop() == "clean"
    assert server.exit_code() == 0
    assert not os.path.exists(server.stderr_path)


def test_skip_exit_is_a_skip_with_the_servers_reason() -> None:
    exc = failure("from servers.backend import exit_unavailable; "
                  "exit_unavailable('no such device here')")
    assert exc.skipped and exc.reason == "no such device here"
    assert "skipped: no such device here" in exc.stderr


def test_exit_before_ready_is_a_failure_with_stderr() -> None:
    exc = failure("import sys; print('no port for you', file=sys.stderr); sys.exit(1)")
    assert not exc.skipped
    assert exc.reason == "exited before ready (exit status 1): no port for you"


def test_exit_is_seen_while_a_child_holds_stdout_and_the_child_is_killed() -> None:
    began = time.monotonic()
    exc = failure(DIES_CHILD_HOLDS_STDOUT)
    assert time.monotonic() - began < 5
    assert exc.reason == "exited before ready (exit status 1): cannot bind"
    me = psutil.Process()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and DIES_CHILD_HOLDS_STDOUT in p.info["cmdline"]
                and p.pid != me.pid and p.status() != psutil.STATUS_ZOMBIE]


def test_silence_is_bounded() -> None:
    began = time.monotonic()
    exc = failure("import sys, time; print('warming up', file=sys.stderr, flush=True); "
                  "time.sleep(60)", ready_timeout=0.5)
    assert time.monotonic() - began < 3
    assert exc.reason == "not ready within 0.5 s: warming up" and not exc.skipped


def test_another_first_line_is_refused() -> None:
    exc = failure("import time; print('hello', flush=True); time.sleep(60)")
    assert exc.reason == "unexpected readiness line 'hello'"


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    server = start(IGNORES_TERM)
    began = time.monotonic()
    assert server.stop(grace=0.3) == "still running 0.3 s after SIGTERM (killed)"
    assert time.monotonic() - began < 3
    assert server.exit_code() == -9


def test_a_child_left_running_is_named_and_killed() -> None:
    server = start(LEAVES_CHILD)
    (child,) = server.tree()[1:]
    assert server.stop() == "1 child process(es) left running after exit (killed)"
    assert server.descendants == [child] and not server.leftovers()  # killed (or a zombie)
