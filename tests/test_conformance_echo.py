"""Echo conformance, for every backend that speaks echo: bytes back, exactly, in order."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.clients import recv_exactly, recv_until_closed
from tests.servers import RunningServer, entries_for, ids, running_server

ENTRIES = entries_for("echo")


@pytest.fixture(scope="module", params=ENTRIES, ids=ids(ENTRIES))
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(request.param, "echo", "--idle-timeout", "10") as srv:
        yield srv


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def echo_concurrently(sock: socket.socket, data: bytes, pieces: list[int] | None = None) -> bytes:
    """Send ``data`` (in ``pieces`` if given) from a thread while reading the echo here."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            if pieces is None:
                sock.sendall(data)
            else:
                start = 0
                for size in pieces:
                    sock.sendall(data[start:start + size])
                    start += size
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        got = recv_exactly(sock, len(data), timeout=60)
    finally:
        sender.join(30)
    assert not errors, errors
    return got


@pytest.mark.parametrize("size", [1, 64 * 1024, 8 * 1024 * 1024], ids=["1B", "64KiB", "8MiB"])
def test_payload_comes_back_identical(server: RunningServer, size: int) -> None:
    data = payload(size, seed=size)
    with server.connect() as sock:
        assert echo_concurrently(sock, data) == data


@pytest.mark.parametrize("seed", range(5))
def test_random_splits(server: RunningServer, seed: int) -> None:
    rng = random.Random(seed)
    data = payload(rng.randint(1, 200_000), seed)
    pieces = []
    left = len(data)
    while left:
        size = min(left, rng.choice([1, 2, 7, 100, 1460, 4096, 65536]))
        pieces.append(size)
        left -= size
    with server.connect() as sock:
        assert echo_concurrently(sock, data, pieces) == data


def test_binary_and_nul_bytes(server: RunningServer) -> None:
    data = bytes(range(256)) * 64 + b"\x00" * 1000
    with server.connect() as sock:
        assert echo_concurrently(sock, data) == data


def test_200_clients(server: RunningServer) -> None:
    """200 clients connect and send at once. A concurrent server answers them in any
    order (read here last-first); the iterative one answers each after the previous left."""
    socks = [server.connect(timeout=20) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"client %d\n" % i)
        order = range(len(socks))
        if server.entry.concurrent:
            order = reversed(order)
        for i in order:
            expected = b"client %d\n" % i
            assert recv_exactly(socks[i], len(expected)) == expected
            socks[i].close()
    finally:
        for sock in socks:
            sock.close()


def test_half_close_gets_every_echo(server: RunningServer) -> None:
    data = payload(300_000, seed=7)
    with server.connect() as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock, timeout=30) == data


def test_data_and_end_of_file_together(server: RunningServer) -> None:
    """A short message and the FIN arrive before the server reads: the echo comes back and
    the connection closes at once, not when the idle timeout (10 s here) fires. Catches
    an edge-triggered loop that stops at a short read and never sees the hang-up."""
    with server.connect() as sock:
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        assert recv_until_closed(sock, timeout=8) == b"bye"
        assert time.monotonic() - start < 3
