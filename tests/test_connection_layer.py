"""The non-blocking connection layer (servers/drivers/connection.py) over real sockets.

Every driver that uses the layer (the readiness loop on select, epoll and
edge-triggered epoll; the asyncio adapter on the stdlib loop and on uvloop; the
io_uring completion loop with a multishot and a single-shot recv, skipped with
the reason where io_uring cannot run) runs in a thread of this process with
settings the command line does not offer (the linger bounds), and a blocking
client checks what the peer sees:

- the lingering close ends after ``linger_bytes`` even while the peer keeps
  sending, after ``linger_seconds`` while it sends slowly, and at once when the
  peer ends its stream;
- a graceful stop closes an idle connection at once and finishes the response
  in flight (a file larger than the socket buffers, to a client that reads it
  after the stop) before closing;
- a pipelined burst whose answers pass the write high-water mark many times over
  is answered in full and in order: parsing pauses on the mark and resumes each
  time the output drains (on io_uring, from a send's completion).

The output queue's own rules (what :meth:`OutQueue.sent` takes off, file slices
closed when cleared) are checked without a network first.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from servers.core import FileSlice
from servers.drivers.aio import serve_listener
from servers.drivers.connection import OutQueue
from servers.drivers.pollers import POLLERS
from servers.drivers.readiness import ReadinessLoop
from servers.listener import open_listener
from servers.settings import KIB, MIB, Settings
from servers.stop import StopSignal
from tests.clients import ResponseReader, get, recv_exactly

DRIVERS = ["select", "epoll", "epoll-et", "asyncio", "uvloop", "io_uring", "io_uring-single"]
CLOSE = get("/", headers="Connection: close\r\n")
BIG = 8 * MIB  # a file larger than what loopback socket buffers hold


def _runner(kind: str, listener: socket.socket, settings: Settings,
            stop: StopSignal) -> Callable[[], None]:
    if kind in POLLERS:
        return ReadinessLoop(POLLERS[kind](), listener, settings, stop).run
    if kind.startswith("io_uring"):
        return _io_uring_runner(kind == "io_uring", listener, settings, stop)
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run() -> None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(serve_listener(listener, settings, stop))
        return run
    return lambda: asyncio.run(serve_listener(listener, settings, stop))


def _io_uring_runner(multishot: bool, listener: socket.socket, settings: Settings,
                     stop: StopSignal) -> Callable[[], None]:
    from servers.backend import Unavailable
    from servers.drivers.io_uring import UringLoop
    from servers.io_uring_srv import load_binding, probe

    try:
        features = probe()
    except Unavailable as exc:
        pytest.skip(str(exc))
    if multishot and not features["multishot_recv"]:
        pytest.skip("io_uring: this kernel has no multishot recv with provided buffers")

    def run() -> None:  # the ring is made on the thread that drives it
        UringLoop(load_binding(), listener, settings, stop, multishot_recv=multishot,
                  multishot_accept=features["multishot_accept"]).run()
    return run


@contextmanager
def serving(kind: str, **changes: object) -> Iterator[tuple[tuple[str, int], StopSignal]]:
    """Run driver ``kind`` on a loopback listener in a thread; stop and join it after."""
    settings = Settings(**{"port": 0, "header_timeout": 2.0, **changes})  # type: ignore[arg-type]
    listener = open_listener(settings)
    stop = StopSignal()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    try:
        run = _runner(kind, listener, settings, stop)
    except BaseException:  # a skip (io_uring unavailable) included
        listener.close()
        raise
    thread = threading.Thread(target=target, name=f"server-{kind}", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2], stop
    finally:
        stop.set()
        thread.join(10.0)
        listener.close()
    assert not thread.is_alive(), "the server did not stop"
    assert not failures, failures


def _connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5.0)


def _answered_and_half_closed(sock: socket.socket) -> None:
    """Send one request that closes, read its answer, then the server's end of stream."""
    sock.sendall(CLOSE)
    assert ResponseReader(sock).read().status == 200
    sock.settimeout(5.0)
    assert sock.recv(1) == b"", "the server did not half-close after its last answer"


def _open_sockets() -> int:
    """Socket descriptors open in this process (server and client sides alike)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except FileNotFoundError:
            pass  # closed meanwhile (listdir's own descriptor)
    return count


def _reset_after(sock: socket.socket, period: float, limit: float) -> float:
    """Send a byte every ``period`` s until the peer resets the connection; return how
    long that took (at most ``limit`` s: TimeoutError)."""
    errors = select.poll()  # the peer's end of stream is readable; only a reset is waited for
    errors.register(sock, select.POLLERR | select.POLLHUP)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            sock.send(b"x")
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        errors.poll(period * 1000)
    raise TimeoutError(f"still lingering after {limit} s")


# -- the output queue, without a network ------------------------------------------------

def _slice(tmp_path: Path, data: bytes) -> FileSlice:
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    st = os.stat(path)
    return FileSlice(bytes(path), 0, len(data), (st.st_dev, st.st_ino))


def test_out_queue_takes_off_what_left(tmp_path: Path) -> None:
    out = OutQueue([b"abc", b"de"])
    assert out.gather(1 << 20) == b"abcde"
    out.sent(4)  # across two items
    assert list(map(bytes, out)) == [b"e"]
    item = _slice(tmp_path, b"0123456789")
    out.append(item)
    out.sent(1)
    assert out[0] is item and not item.is_open
    item.open()
    out.sent(4)
    assert out[0] is item and item.offset == 4 and item.count == 6 and item.is_open
    out.sent(6)
    assert not out and not item.is_open, "a finished slice is closed and dropped"


def test_out_queue_opens_slices_late_and_closes_them_when_cleared(tmp_path: Path) -> None:
    first, second = _slice(tmp_path, b"one"), _slice(tmp_path, b"two")
    out = OutQueue([first, b"between", second])
    assert not first.is_open and not second.is_open  # queued: no descriptor yet
    assert os.pread(first.fileno(), 3, 0) == b"one"  # its turn: opened now
    out.clear()
    assert not out and not first.is_open and not second.is_open


def test_gather_joins_up_to_the_limit_and_stops_at_a_file(tmp_path: Path) -> None:
    out = OutQueue([b"a" * 10, b"b" * 10, b"c" * 10, _slice(tmp_path, b"f"), b"d"])
    assert out.gather(15) == b"a" * 10 + b"b" * 10  # joined until the limit is passed
    assert out.gather(100) == b"a" * 10 + b"b" * 10 + b"c" * 10  # not across the file
    assert len(out) == 5, "gather leaves the items queued"
    out.clear()


# -- the life cycle over real sockets ---------------------------------------------------

@pytest.mark.parametrize("kind", DRIVERS)
def test_linger_ends_after_linger_bytes(kind: str) -> None:
    """A peer that keeps sending after the last answer is dropped after linger_bytes,
    long before linger_seconds."""
    with serving(kind, linger_seconds=60.0, linger_bytes=64 * KIB) as (address, _):
        with _connect(address) as sock:
            _answered_and_half_closed(sock)
            chunk = b"y" * (64 * KIB)
            start = time.monotonic()
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                for _ in range(4096):  # 256 MiB at most: far beyond any socket buffer
                    if time.monotonic() - start > 15.0:
                        break
                    sock.sendall(chunk)
            assert time.monotonic() - start < 15.0


@pytest.mark.parametrize("kind", DRIVERS)
def test_linger_ends_after_linger_seconds(kind: str) -> None:
    """A peer that sends a little now and then is dropped after linger_seconds."""
    with serving(kind, linger_seconds=0.3, linger_bytes=MIB, header_timeout=0.2) as (
            address, _):
        with _connect(address) as sock:
            _answered_and_half_closed(sock)
            took = _reset_after(sock, period=0.02, limit=10.0)
    # The readiness loop looks at deadlines every header_timeout / 4 (0.05 s).
    assert 0.25 <= took < 3.0, took


@pytest.mark.parametrize("kind", DRIVERS)
def test_peer_end_of_stream_ends_the_linger_at_once(kind: str) -> None:
    with serving(kind, linger_seconds=60.0) as (address, _):
        with _connect(address) as sock:
            _answered_and_half_closed(sock)
            lingering = _open_sockets()
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 5.0
            while _open_sockets() == lingering and time.monotonic() < deadline:
                select.select([], [], [], 0.01)
            assert _open_sockets() == lingering - 1, "still lingering after the peer's FIN"


@pytest.mark.parametrize("kind", DRIVERS)
def test_stop_closes_idle_at_once_and_finishes_the_answer_in_flight(
        kind: str, tmp_path: Path) -> None:
    payload = os.urandom(256) * (BIG // 256)
    (tmp_path / "big.bin").write_bytes(payload)
    with serving(kind, root=tmp_path, shutdown_grace=10.0) as (address, stop):
        with _connect(address) as idle, _connect(address) as busy:
            idle.sendall(get("/"))
            assert ResponseReader(idle).read().status == 200
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
            busy.sendall(get("/big.bin"))
            head = b""
            while b"\r\n\r\n" not in head:  # the head and the start of the body
                chunk = busy.recv(4096)
                assert chunk, f"closed before the head: {head[:200]!r}"
                head += chunk
            stop.set()
            idle.settimeout(5.0)
            assert idle.recv(1) == b"", "an idle connection is closed at once on stop"
            head, _, body = head.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % BIG in head
            body += recv_exactly(busy, BIG - len(body), timeout=10.0)
            assert body == payload, "the answer in flight is finished"
            busy.settimeout(5.0)
            assert busy.recv(1) == b"", "then the connection is closed"


@pytest.mark.parametrize("kind", DRIVERS)
def test_pipelined_answers_over_the_mark_come_in_full_and_in_order(
        kind: str, tmp_path: Path) -> None:
    bodies = [os.urandom(1024) + b"%04d" % i for i in range(64)]  # 64 KiB of answers
    for i, body in enumerate(bodies):
        (tmp_path / f"f{i}.bin").write_bytes(body)
    burst = b"".join(get(f"/f{i}.bin") for i in range(len(bodies))) + CLOSE
    with serving(kind, root=tmp_path, write_high_water=4 * KIB) as (address, _):
        with _connect(address) as sock:
            sock.sendall(burst)  # one write: most of it is held while the output drains
            reader = ResponseReader(sock)
            for body in bodies:
                response = reader.read()
                assert (response.status, response.body) == (200, body)
            assert reader.read().status == 200
            sock.settimeout(5.0)
            assert sock.recv(1) == b"", "the last answer closes"
