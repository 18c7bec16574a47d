"""kecho: echo correctness, concurrency, a client that never reads, unloading."""

from __future__ import annotations

import os
import random
import select
import selectors
import socket
import threading
import time

import pytest

from tests.kernel import helpers

MODES = {
    "wq": {"mode": "wq"},
    "wq-bound": {"mode": "wq", "bound": True},
    "kthread": {"mode": "kthread"},
}
SIZES = [1, 2, 3, 255, 1024, 1460, 4096, 65535, 65536, 65537, 262144, 1 << 20]


@pytest.fixture(params=sorted(MODES))
def kecho(request: pytest.FixtureRequest, port: int) -> int:
    helpers.load("kecho", port=port, **MODES[request.param])
    helpers.connect(port).close()
    return port


def payload(n: int, seed: int) -> bytes:
    """Binary bytes with NULs in them (at the start, the end and scattered)."""
    data = bytearray(random.Random(seed).randbytes(n))
    for i in range(0, n, 97):
        data[i] = 0
    data[-1] = 0
    return bytes(data)


def test_echo_sizes_one_connection(kecho: int) -> None:
    with helpers.connect(kecho) as s:
        for n in SIZES:
            data = payload(n, n)
            assert helpers.exchange(s, data, n) == data, n


@pytest.mark.parametrize("n", [1, 4096, 1 << 20])
def test_echo_fresh_connection(kecho: int, n: int) -> None:
    data = payload(n, 7)
    with helpers.connect(kecho) as s:
        assert helpers.exchange(s, data, n) == data
        s.shutdown(socket.SHUT_WR)
        assert helpers.read_until_eof(s) == b""


def test_one_mebibyte_in_one_write(kecho: int) -> None:
    data = payload(1 << 20, 11)
    sent: list[int] = []
    with helpers.connect(kecho) as s:
        s.settimeout(None)  # truly blocking: one send(2) copies the whole message
        sender = threading.Thread(target=lambda: sent.append(s.send(data)))
        sender.start()
        got = bytearray()
        deadline = time.monotonic() + 30
        while len(got) < len(data):
            left = deadline - time.monotonic()
            assert left > 0 and select.select([s], [], [], left)[0], f"got {len(got)} bytes"
            chunk = s.recv(1 << 20)
            assert chunk, "EOF before the whole message came back"
            got += chunk
        sender.join(30)
    assert not sender.is_alive()
    assert sent == [len(data)]
    assert bytes(got) == data


def test_100_concurrent_clients(kecho: int) -> None:
    socks = [helpers.connect(kecho) for _ in range(100)]
    try:
        want = {s: payload(3000, i) for i, s in enumerate(socks)}
        got = {s: bytearray() for s in socks}
        sel = selectors.DefaultSelector()
        for s in socks:
            s.sendall(want[s])
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                chunk = s.recv(65536)
                assert chunk, "server closed early"
                got[s] += chunk
                if len(got[s]) >= len(want[s]):
                    sel.unregister(s)
                    pending.discard(s)
        sel.close()
        assert not pending, f"{len(pending)} clients not served in 30s"
        assert all(bytes(got[s]) == want[s] for s in socks)
    finally:
        for s in socks:
            s.close()


def test_client_that_never_reads(kecho: int) -> None:
    before = helpers.meminfo_kib("MemAvailable")
    hog = helpers.small_buffers()
    hog.connect(("127.0.0.1", kecho))
    try:
        budget = 64 << 20
        sent = helpers.stuff_until_stalled(hog, budget, stall_s=1.5, limit_s=60)
        # Socket buffers (autotuned to a few MiB at most) hold what was taken.
        assert sent < 32 << 20, f"server took {sent} bytes from a client that never reads"
        drop = before - helpers.meminfo_kib("MemAvailable")
        assert drop < 96 * 1024, f"MemAvailable dropped {drop} KiB"
        # Everyone else is still served.
        with helpers.connect(kecho) as other:
            data = payload(100_000, 3)
            assert helpers.exchange(other, data, len(data)) == data
        # The worker is blocked in sendmsg on the stuffed connection: unloading
        # must still wake it and finish promptly.
        took = helpers.unload("kecho")
        assert took < 2.0, f"rmmod with a stuffed connection took {took:.2f}s"
    finally:
        hog.close()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_unload_with_100_idle_clients(port: int, mode: str) -> None:
    helpers.load("kecho", port=port, **MODES[mode])
    socks = [helpers.connect(port) for _ in range(100)]
    try:
        for s in socks:  # every connection has a worker blocked in recvmsg
            assert helpers.exchange(s, b"\0", 1) == b"\0"
        took = helpers.unload("kecho")
        assert took < 2.0, f"rmmod with 100 idle connections took {took:.2f}s"
        assert all(helpers.closed_by_peer(s, 5.0) for s in socks)
    finally:
        for s in socks:
            s.close()


def _hammer(port: int, stop: threading.Event, counts: list[int]) -> None:
    data = os.urandom(8192)
    try:
        with helpers.connect(port) as s:
            while not stop.is_set():
                if helpers.exchange(s, data, len(data), timeout=10) != data:
                    return
                counts.append(1)
    except OSError:
        return  # the server went away mid-exchange: expected


@pytest.mark.parametrize("mode", sorted(MODES))
def test_unload_under_load(port: int, mode: str) -> None:
    helpers.load("kecho", port=port, **MODES[mode])
    stop = threading.Event()
    counts: list[int] = []
    threads = [threading.Thread(target=_hammer, args=(port, stop, counts)) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(counts) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts, "no exchange completed before the unload"
    took = helpers.unload("kecho")
    stop.set()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert took < 5.0, f"rmmod under load took {took:.2f}s"
    assert "kecho" not in helpers.loaded_modules()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_leak_after_connections_and_unload(port: int, mode: str) -> None:
    base = helpers.tcp_sockstat()["alloc"]
    helpers.load("kecho", port=port, **MODES[mode])
    for i in range(50):  # sequential: finished workers must not pile up
        with helpers.connect(port) as s:
            assert helpers.exchange(s, payload(512, i), 512) == payload(512, i)
    assert len(helpers.threads_named("kecho/")) <= 2
    open_socks = [helpers.connect(port) for _ in range(20)]
    for s in open_socks:
        assert helpers.exchange(s, b"x", 1) == b"x"
    if mode == "kthread":
        assert len(helpers.threads_named("kecho/")) >= 20
    helpers.unload("kecho")
    for s in open_socks:
        s.close()
    assert helpers.threads_named("kecho") == []
    # Every socket the module had (listener and connections) is gone; the test's
    # own sockets are closed too, so the count comes back to where it was.
    assert helpers.poll_until(lambda: helpers.tcp_sockstat()["alloc"] <= base, 10.0), (
        base, helpers.tcp_sockstat())


@pytest.mark.parametrize("mode", sorted(MODES))
def test_idle_connection_closed_after_idle_timeout(port: int, mode: str) -> None:
    helpers.load("kecho", port=port, idle_timeout=1, **MODES[mode])
    with helpers.connect(port) as s:
        assert helpers.exchange(s, b"x", 1) == b"x"
        start = time.monotonic()
        assert helpers.closed_by_peer(s, 10.0)
        assert 0.5 < time.monotonic() - start < 10.0
