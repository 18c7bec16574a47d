"""The tracing view (bench.vm_trace) read against what the test itself made happen.

N connections to kecho on CMWQ must read as N work items, each queued, started and
ended; N connections to kecho in kthread mode as N threads created and run; a process
making a known number of one system call as that many calls; khttpd answering N
requests as at least N socket sends under function_graph.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from bench import vm_trace
from bench import vm_trace_parse as parse
from tests.kernel import helpers

N = 12


@pytest.fixture
def tracefs() -> Iterator[None]:
    try:
        vm_trace.mount()
    except vm_trace.TraceError as exc:
        pytest.skip(str(exc))
    yield
    vm_trace.unconfigure()


def collect(until: Callable[[str], bool], limit_s: float = 10.0) -> str:
    """Drain the buffer until ``until(text)`` holds (bounded); tracing is then stopped."""
    text = ""
    deadline = time.monotonic() + limit_s
    while True:
        text += vm_trace.drain()
        if until(text) or time.monotonic() > deadline:
            vm_trace.tracing(False)
            return text + vm_trace.drain()
        time.sleep(0.05)


def echo_connections(port: int, n: int) -> None:
    for i in range(n):
        with helpers.connect(port) as s:
            assert helpers.exchange(s, b"c%02d" % i, 3) == b"c%02d" % i
            s.shutdown(socket.SHUT_WR)
            assert helpers.read_until_eof(s) == b""


def test_cmwq_reads_one_work_item_per_connection(tracefs: None, port: int) -> None:
    helpers.load("kecho", port=port, mode="wq")
    helpers.connect(port).close()  # its work item, if still running, matches no queueing
    vm_trace.configure("workqueue")
    vm_trace.tracing(True)
    echo_connections(port, N)
    text = collect(lambda t: parse.workqueue(parse.events(t), "kecho", N)
                   ["execution_us"]["n"] >= N)
    got = parse.workqueue(parse.events(text), "kecho", N)
    assert got["work_items"] == N
    assert got["queue_to_start_us"]["n"] == N
    assert got["execution_us"]["n"] == N
    assert min(got["waits"]) >= 0
    assert got["kworkers"] >= 1
    assert got["work_items_per_req"] == pytest.approx(1.0)


def test_kthread_mode_reads_one_thread_per_connection(tracefs: None, port: int) -> None:
    helpers.load("kecho", port=port, mode="kthread")
    helpers.connect(port).close()
    vm_trace.configure("kthread")
    vm_trace.tracing(True)
    echo_connections(port, N)
    text = collect(lambda t: parse.kthreads(parse.events(t), "kecho", N)["threads"] >= N)
    got = parse.kthreads(parse.events(text), "kecho", N)
    assert got["threads"] == N
    assert got["create_to_run_us"]["n"] == N
    assert min(got["waits"]) > 0
    assert got["worker_switch_per_req"] >= 1  # each worker is switched in at least once


def test_syscalls_are_counted_by_name(tracefs: None) -> None:
    calls = 200
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
         f"[os.getppid() for _ in range({calls})]; print('done', flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        vm_trace.configure("syscalls", pids=[child.pid])
        vm_trace.tracing(True)
        out, _ = child.communicate("go\n", timeout=30)
        assert out.strip() == "done"
        vm_trace.tracing(False)
        text = vm_trace.drain()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    rows = {r["syscall"]: r for r in parse.syscalls(parse.events(text), None, calls, top=50)}
    assert rows["getppid"]["per_req"] == pytest.approx(1.0)
    assert rows["getppid"]["p50_us"] is not None and rows["getppid"]["p50_us"] >= 0
    assert os.getpid() not in {e.pid for e in parse.events(text)}  # only the child's


def head_request(s: socket.socket) -> None:
    """HEAD / on a kept-alive connection; its whole answer read (it has no body)."""
    s.sendall(b"HEAD / HTTP/1.1\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = s.recv(4096)
        assert chunk
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_khttpd_hot_path_counts_its_socket_calls(tracefs: None, port: int) -> None:
    helpers.load("khttpd", port=port)
    with helpers.connect(port) as s:
        head_request(s)  # the worker is running before tracing starts
        vm_trace.configure("graph", "khttpd")
        vm_trace.tracing(True)
        for _ in range(N):
            head_request(s)
        vm_trace.tracing(False)
        text = vm_trace.drain()
    rows = {r["function"]: r for r in parse.graph(text, N, top=100)}
    assert rows["kernel_sendmsg"]["calls_per_req"] >= 1.0, sorted(rows)
    assert rows["kernel_sendmsg"]["us_per_call"] > 0
