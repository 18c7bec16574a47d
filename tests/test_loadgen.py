"""The native load generator against c-epoll, a broken echo server and a silent one;
c-epoll's HTTP bytes against the Python core's; the ``--json`` schema of the CLI."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import loadgen
from tests.servers import running_server, start_server

ROOT = Path(__file__).resolve().parent.parent
DATE = re.compile(rb"Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = start_server("c-epoll", "echo")
    yield server.port
    assert server.stop(timeout=5) == 0


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = start_server("c-epoll", "http")
    yield server.port
    assert server.stop(timeout=5) == 0


def assert_clean(result: dict, requests: int) -> None:
    assert result["errors"] == dict.fromkeys(loadgen.ERROR_KINDS, 0), result
    assert result["errors_total"] == 0
    assert result["requests"] == requests
    lat = result["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]


# -- workloads against c-epoll ---------------------------------------------------------------

@pytest.mark.parametrize("workload", ["echo", "echo-connect"])
def test_echo_workloads(echo_port: int, workload: str) -> None:
    result = loadgen.run("127.0.0.1", echo_port, workload, 8, 20.0, threads=2, size=3000,
                         requests=2000)
    assert_clean(result, 2000)
    assert result["bytes_sent"] == result["bytes_received"] == 2000 * 3000


@pytest.mark.parametrize("workload", ["http", "http-connect", "http-pipeline"])
def test_http_workloads(http_port: int, workload: str) -> None:
    result = loadgen.run("127.0.0.1", http_port, workload, 8, 20.0, threads=2, pipeline=8,
                         requests=3000)
    assert_clean(result, 3000)
    assert result["workload"] == workload
    assert result["bytes_received"] > 3000 * 100


def test_ten_thousand_connections(echo_port: int) -> None:
    result = loadgen.run("127.0.0.1", echo_port, "echo", 10_000, 20.0, threads=2, size=16,
                         requests=20_000)
    assert_clean(result, 20_000)


def test_duration_run_and_cpu(http_port: int) -> None:
    result = loadgen.run("127.0.0.1", http_port, "http", 4, 0.5, threads=2)
    assert result["errors_total"] == 0
    assert 0.45 < result["duration_s"] < 1.0
    assert result["requests"] > 100
    assert result["requests_per_s"] == pytest.approx(result["requests"] / result["duration_s"])
    assert 0 < result["client_cpu_s"]
    assert 0 < result["client_cpu_util"] <= 1.05
    assert result["open_loop"] is False and result["rate"] is None


def test_open_loop_holds_the_rate(http_port: int) -> None:
    result = loadgen.run("127.0.0.1", http_port, "http", 10, 1.0, threads=2, rate=2000)
    assert result["open_loop"] is True and result["rate"] == 2000
    assert result["errors_total"] == 0
    assert 1800 <= result["requests"] <= 2200


def test_warmup_is_not_measured(http_port: int) -> None:
    result = loadgen.run("127.0.0.1", http_port, "http", 4, 0.3, threads=1, rate=1000,
                         warmup=0.3)
    assert 250 <= result["requests"] <= 350
    assert result["duration_s"] < 0.5


def test_idle_connections_stay_open(echo_port: int) -> None:
    result = loadgen.run("127.0.0.1", echo_port, "echo", 2, 0.3, threads=2, idle=50)
    assert result["idle_open"] == 50
    assert result["errors_total"] == 0


def test_idle_connections_closed_by_the_server() -> None:
    with running_server("c-epoll", "echo", "--idle-timeout", "0.2") as server:
        result = loadgen.run("127.0.0.1", server.port, "echo", 1, 1.0, threads=1, rate=20,
                             idle=10)
    assert result["idle_open"] == 0
    assert result["errors_total"] == 0


# -- failures are counted, never hang ---------------------------------------------------------

def _serve_in_thread(handler, connections: int) -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def loop() -> None:
        try:
            for _ in range(connections):
                conn, _ = listener.accept()
                threading.Thread(target=handler, args=(conn,), daemon=True).start()
        except OSError:
            pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return listener, thread


def _corrupting_echo(conn: socket.socket) -> None:
    conn.settimeout(5)
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(bytes([data[0] ^ 0x55]) + data[1:])
        except OSError:
            pass


def test_wrong_echo_bytes_are_detected() -> None:
    listener, _ = _serve_in_thread(_corrupting_echo, 50)
    with listener:
        result = loadgen.run("127.0.0.1", listener.getsockname()[1], "echo", 2, 0.5,
                             threads=1, size=100)
    assert result["errors"]["wrong"] > 0
    assert result["requests"] == 0


def _silent(conn: socket.socket) -> None:
    conn.settimeout(3)
    with conn:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass


def test_silent_server_gives_timeouts_and_the_run_ends() -> None:
    listener, _ = _serve_in_thread(_silent, 4)
    start = time.monotonic()
    with listener:
        result = loadgen.run("127.0.0.1", listener.getsockname()[1], "http", 4, 0.3,
                             threads=2, timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert result["errors"]["timeout"] == 4
    assert result["requests"] == 0


def test_server_that_dies_mid_run() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_50_then_die() -> None:
        listener.settimeout(5)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        listener.close()
        with conn:
            conn.settimeout(5)
            for _ in range(50):
                data = b""
                while len(data) < 10:
                    chunk = conn.recv(10 - len(data))
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(data)

    thread = threading.Thread(target=answer_50_then_die, daemon=True)
    thread.start()
    start = time.monotonic()
    result = loadgen.run("127.0.0.1", port, "echo", 1, 0.8, threads=1, size=10)
    assert time.monotonic() - start < 3.0
    thread.join(timeout=5)
    assert result["requests"] == 50
    # Whether the close itself counts (reset/short) depends on whether the FIN arrived
    # with the 50th answer or after the 51st request went out; the reconnects that follow
    # are refused either way, so the death is always reported.
    assert result["errors"]["refused"] >= 1


def _echo_with_one_stall(conn: socket.socket) -> None:
    """Echo 10-byte requests; before answering the 20th, stall for 0.3 s."""
    conn.settimeout(5)
    with conn:
        try:
            for count in itertools.count(1):
                data = b""
                while len(data) < 10:
                    chunk = conn.recv(10 - len(data))
                    if not chunk:
                        return
                    data += chunk
                if count == 20:
                    time.sleep(0.3)  # the stall being measured, not a synchronisation
                conn.sendall(data)
        except OSError:
            pass


@pytest.mark.parametrize("open_loop", [True, False])
def test_open_loop_counts_stalls_from_the_due_time(open_loop: bool) -> None:
    listener, _ = _serve_in_thread(_echo_with_one_stall, 1)
    with listener:
        result = loadgen.run("127.0.0.1", listener.getsockname()[1], "echo", 1, 1.0,
                             threads=1, size=10, rate=200 if open_loop else None)
    assert result["errors_total"] == 0
    assert result["latency_us"]["max"] >= 250_000
    if open_loop:
        # ~60 requests fell due during the stall: each waited from its due time
        assert result["latency_us"]["p90"] >= 100_000
    else:
        # closed loop: only the one stalled request saw it (coordinated omission)
        assert result["latency_us"]["p90"] < 100_000


def test_refused_is_counted() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = loadgen.run("127.0.0.1", port, "http", 2, 0.6, threads=1)
    assert result["errors"]["refused"] > 0
    assert result["requests"] == 0


def test_status_errors_are_counted(http_port: int) -> None:
    # c-epoll answers HEAD-less GETs of / only; a pipelined run against it is clean, so
    # ask a tiny server that always answers 404.
    def not_found(conn: socket.socket) -> None:
        conn.settimeout(3)
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
            except OSError:
                pass

    listener, _ = _serve_in_thread(not_found, 2)
    with listener:
        result = loadgen.run("127.0.0.1", listener.getsockname()[1], "http", 1, 0.3,
                             threads=1)
    assert result["errors"]["status"] > 0
    assert result["requests"] == 0


def test_body_delimited_by_close() -> None:
    def http10(conn: socket.socket) -> None:
        conn.settimeout(3)
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nbody until the close")
            except OSError:
                pass

    listener, _ = _serve_in_thread(http10, 10_000)
    with listener:
        result = loadgen.run("127.0.0.1", listener.getsockname()[1], "http-connect", 2, 20.0,
                             threads=1, requests=200)
    assert_clean(result, 200)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        loadgen.run("127.0.0.1", 80, "gopher", 1, 1.0)
    with pytest.raises(ValueError):
        loadgen.run("127.0.0.1", 80, "http", 0, 1.0)


# -- c-epoll's bytes equal the Python core's ------------------------------------------------

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /missing HTTP/1.1\r\n\r\n",
    b"GET /?q=1 HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"DELETE /x HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
]


def core_answer(request: bytes) -> tuple[bytes, bool]:
    """What the Python core answers, and whether it closes."""
    from servers.core import session_factory
    from servers.settings import Settings

    session = session_factory(Settings(proto="http"))(time.monotonic())
    session.received(request, time.monotonic())
    out = b"".join(item for item in session.take_output() if isinstance(item, bytes))
    return out, session.closing


def c_epoll_answer(port: int, request: bytes, expected_len: int, closes: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < expected_len:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if closes:
            sock.settimeout(2)
            assert sock.recv(65536) == b"", "c-epoll should have closed"
        return data


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=range(len(REQUESTS)))
def test_http_bytes_match_the_core(http_port: int, request_bytes: bytes) -> None:
    expected, closes = core_answer(request_bytes)
    got = c_epoll_answer(http_port, request_bytes, len(expected), closes)
    assert DATE.sub(b"Date: D\r\n", got) == DATE.sub(b"Date: D\r\n", expected)


# -- the CLI ---------------------------------------------------------------------------------

def test_cli_json_schema(http_port: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{http_port}",
         "--workload", "http", "-c", "4", "--threads", "2", "--requests", "500", "--json"],
        cwd=ROOT, capture_output=True, timeout=30, check=True,
    )
    result = json.loads(out.stdout)
    assert tuple(result) == loadgen.RESULT_KEYS
    assert tuple(result["latency_us"]) == loadgen.LATENCY_KEYS
    assert tuple(result["errors"]) == loadgen.ERROR_KINDS
    assert result["requests"] == 500 and isinstance(result["requests"], int)
    assert result["connections"] == 4 and result["threads"] == 2
    for key in ("duration_s", "requests_per_s", "client_cpu_s", "client_cpu_util"):
        assert isinstance(result[key], float)
    assert result["rate"] is None and result["open_loop"] is False


def test_cli_human_output(http_port: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{http_port}",
         "-c", "2", "--requests", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )
    assert "req/s" in out.stdout and "p99" in out.stdout


@pytest.mark.parametrize("argv", [["--target", "nohostport"], ["--target", "h:1", "-c", "0"],
                                  ["--target", "h:1", "--workload", "ftp"], []])
def test_cli_bad_flags_exit_2(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen", *argv], cwd=ROOT,
                         capture_output=True, timeout=30)
    assert out.returncode == 2


def test_c_epoll_refuses_root(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "servers.c_epoll", "--root", str(tmp_path)],
                         cwd=ROOT, capture_output=True, timeout=30)
    assert out.returncode == 2
    assert b"--root" in out.stderr
