"""Limits every backend must keep: timeouts, backpressure, graceful stop, bad flags."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from servers.core import wire
from tests.clients import ResponseReader, get, recv_exactly, recv_until_closed
from tests.servers import REPO, RunningServer, entries_for, ids, running_server

ECHO = entries_for("echo")
HTTP = entries_for("http")
ALL = [e for e in ECHO if e in HTTP]
MIB = 1024 * 1024


@pytest.fixture(scope="module", params=HTTP, ids=ids(HTTP))
def strict(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """An HTTP server with one-second idle timeout and header deadline."""
    with running_server(request.param, "http", "--idle-timeout", "1",
                        "--header-timeout", "1") as srv:
        yield srv


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Wait (bounded) for the server to close ``sock``; return how long it took."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_idle_connection_is_closed(strict: RunningServer) -> None:
    with strict.connect() as sock:
        took = _closed_within(sock, 5)
    assert 0.5 < took < 3.0


def test_idle_keep_alive_connection_is_closed(strict: RunningServer) -> None:
    with strict.connect() as sock:
        sock.sendall(get("/"))
        assert ResponseReader(sock).read().status == 200
        took = _closed_within(sock, 5)
    assert 0.5 < took < 3.0


def test_trickling_header_hits_the_deadline(strict: RunningServer) -> None:
    """A client that keeps sending (so it is never idle) but never finishes its header."""
    with strict.connect() as sock:
        start = time.monotonic()
        closed = False
        sock.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(100):  # 0.1 s apart: 10 s at most, the deadline is 1 s
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
        took = time.monotonic() - start
    assert closed and took < 3.0


def _sender(sock: socket.socket, total: int, progress: list[int], stop: threading.Event) -> None:
    """Send up to ``total`` bytes without ever reading; stop when told or when stuck."""
    chunk = b"x" * 65536
    sock.settimeout(0.2)
    try:
        while progress[0] < total and not stop.is_set():
            try:
                progress[0] += sock.send(chunk)
            except TimeoutError:
                continue
    except OSError:
        pass


@pytest.mark.parametrize("entry", ECHO, ids=ids(ECHO))
def test_backpressure_client_that_never_reads(entry: object) -> None:
    """64 MiB sent to echo by a client that never reads: memory stays bounded and (for
    concurrent backends) other clients are served meanwhile; iterative serves no one else."""
    with running_server(entry, "echo") as server:
        with server.connect() as warm:  # let the runtime reach its steady size first
            warm.sendall(b"w" * 100_000)
            recv_exactly(warm, 100_000)
        before = server.rss()
        hog = server.connect()
        progress = [0]
        stop = threading.Event()
        thread = threading.Thread(target=_sender, args=(hog, 64 * MIB, progress, stop))
        thread.start()
        try:
            # Wait until the hog is stuck: no progress over a window, bounded in total.
            deadline = time.monotonic() + 30
            last = -1
            while time.monotonic() < deadline and progress[0] < 64 * MIB:
                seen = progress[0]
                if seen == last:
                    break
                last = seen
                stop.wait(0.5)
            grown = server.rss() - before
            assert progress[0] < 64 * MIB or grown < 32 * MIB
            assert grown < 32 * MIB, f"server grew by {grown / MIB:.1f} MiB"
            other = server.connect(timeout=2)
            try:
                other.sendall(b"ping")
                if server.entry.concurrent:
                    assert recv_exactly(other, 4, timeout=5) == b"ping"
                else:
                    with pytest.raises(TimeoutError):
                        recv_exactly(other, 4, timeout=1)
            finally:
                other.close()
        finally:
            stop.set()
            thread.join(10)
            hog.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("entry", ALL, ids=ids(ALL))
def test_graceful_stop(entry: object, signum: int) -> None:
    """Stop on a signal: exit 0 within 2 s, idle keep-alive connections closed, no process
    left. (The iterative server has only the one client it is serving.)"""
    with running_server(entry, "http") as server:
        kept = server.connect()
        kept.sendall(get("/"))
        assert ResponseReader(kept).read().status == 200
        silent = server.connect() if server.entry.concurrent else None
        code = server.stop(signum, timeout=2.0)
        leftovers = server.leftovers()
        assert code == 0, f"exit {code}; stderr: {server.stderr_text()}"
        assert not leftovers
        for sock in (kept, silent):
            if sock is not None:
                assert recv_until_closed(sock, timeout=2) == b""
                sock.close()
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=1).close()


@pytest.mark.parametrize("entry", ALL, ids=ids(ALL))
def test_stop_finishes_response_in_flight(entry: object, tmp_path: object) -> None:
    """SIGTERM while a 16 MiB file is being read slowly: the response still completes."""
    if not entry.static_files:
        pytest.skip(f"{entry.name} does not serve files")  # documented in its registry limits
    root = tmp_path
    data = bytes(range(256)) * (64 * 1024)
    (root / "f.bin").write_bytes(data)
    with running_server(entry, "http", "--root", str(root)) as server:
        with server.connect() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(get("/f.bin"))
            reader = ResponseReader(sock, timeout=10)
            reader._fill(time.monotonic() + 5)  # the response has started
            server.proc.send_signal(signal.SIGTERM)
            resp = reader.read()
            assert resp.body == data
        assert server.proc.wait(3) == 0


BAD_FLAGS = [
    ["--bogus"],
    ["--proto", "smtp"],
    ["--port", "70000"],
    ["--idle-timeout", "-1"],
    ["--root", "/nonexistent-dir"],
    ["--proto", "echo", "--root", "/tmp"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=[" ".join(f) for f in BAD_FLAGS])
@pytest.mark.parametrize("entry", ALL, ids=ids(ALL))
def test_bad_flags_exit_2_with_message(entry: object, flags: list[str]) -> None:
    proc = subprocess.run([sys.executable, *entry.argv, *flags], cwd=REPO,
                          capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"error:" in proc.stderr


def test_workers_refused_where_the_model_has_none() -> None:
    for entry in ALL:
        if entry.kind != "python":
            continue
        from servers.cli import build_parser  # noqa: F401 - import check only
        if entry.name in ("iterative", "threaded"):
            proc = subprocess.run([sys.executable, *entry.argv, "--workers", "2"], cwd=REPO,
                                  capture_output=True, timeout=30)
            assert proc.returncode == 2 and b"--workers" in proc.stderr


def test_wire_error_bodies_are_plain_text() -> None:
    for status, body in wire.ERROR_BODIES.items():
        assert body.decode().startswith(str(status))
