"""Kernel servers against hostile clients: no client pins a worker, connections are capped.

Each test names the defect it guards against: a send that blocked forever on a peer
that never reads, a body or chunk framing dripped a byte at a time, a lingering
close kept alive by a drip, a header deadline that only restarted on an empty
buffer, and live plus queued connections without a bound.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.kernel import helpers

ESTABLISHED = "01"
KECHO_MODES = {
    "kecho-wq": ("kecho", {"mode": "wq"}),
    "kecho-kthread": ("kecho", {"mode": "kthread"}),
    "khttpd": ("khttpd", {}),
}
PAGE_REQUEST = b"GET / HTTP/1.1\r\n\r\n"


def served_here(port: int) -> int:
    """Established server-side connections on ``port``: local port ``port``."""
    return helpers.tcp_states(port).count(ESTABLISHED)


@pytest.mark.parametrize("mode", ["wq", "kthread"])
def test_peer_that_never_reads_is_closed_after_idle_timeout(port: int, mode: str) -> None:
    """The send timeout: a worker blocked on a full socket gives up after idle_timeout."""
    helpers.load("kecho", port=port, mode=mode, idle_timeout=2)
    hog = helpers.small_buffers()
    hog.connect(("127.0.0.1", port))
    try:
        start = time.monotonic()
        helpers.stuff_until_stalled(hog, 64 << 20, stall_s=0.5, limit_s=20)
        assert served_here(port) == 1
        assert helpers.poll_until(lambda: served_here(port) == 0, 10.0), \
            "the worker is still blocked sending to a peer that never reads"
        assert time.monotonic() - start > 1.5
        with helpers.connect(port) as other:
            assert helpers.exchange(other, b"next", 4) == b"next"
    finally:
        hog.close()


@pytest.mark.parametrize("what", ["content-length", "chunk-extension", "chunk-zeros"])
def test_dripped_body_is_cut_off_at_header_timeout(port: int, what: str) -> None:
    """A body (or its chunk framing) trickled inside the idle timeout still ends."""
    helpers.load("khttpd", port=port, header_timeout=1, idle_timeout=30)
    if what == "content-length":
        head = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
        body = b"x" * 200
    else:
        head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"1;" + b"e" * 200 if what == "chunk-extension" else b"0" * 200
    with helpers.connect(port) as s:
        s.sendall(head)
        took = helpers.drip(s, body, interval=0.2, limit_s=8.0)
    assert took is not None, f"a {what} body dripped for 8 s was not cut off"
    assert took < 6.0


def test_lingering_close_is_bounded_in_time_not_per_read(port: int) -> None:
    """After Connection: close, a byte every 0.2 s must not keep the worker reading."""
    helpers.load("khttpd", port=port)
    with helpers.connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in helpers.read_until_eof(s, 5.0)
        # The worker lingers, reading, then releases the socket; the next byte
        # dripped into the released socket is answered with a reset.
        took = helpers.drip(s, b"z" * 100, interval=0.2, limit_s=8.0, eof_counts=False)
    assert took is not None, "the lingering close took a drip for 8 s"
    assert took < 5.0


def test_header_deadline_restarts_with_each_request(port: int) -> None:
    """Each head completes in 0.3 s; the buffer is never empty; 3 s in all is fine."""
    helpers.load("khttpd", port=port, header_timeout=1, idle_timeout=30)
    first, rest = PAGE_REQUEST[:5], PAGE_REQUEST[5:]
    with helpers.connect(port) as s:
        s.sendall(first)
        for _ in range(10):
            time.sleep(0.3)  # the pace of the client, not a wait for an event
            s.sendall(rest + first)  # ends one request, starts the next
            head = helpers.read_exactly(s, 4, timeout=5.0)
            assert head == b"HTTP", "cut off although every head completed in time"
            s.settimeout(5.0)
            tail = b""
            while b"</html>\n" not in tail:  # the rest of this one response
                chunk = s.recv(4096)
                assert chunk, "connection closed mid-run"
                tail += chunk


@pytest.mark.parametrize("server", sorted(KECHO_MODES))
def test_connections_capped_honest_client_refused_then_served(port: int, server: str) -> None:
    """max_conns hostile clients hold every slot; past it, connections are closed at once."""
    module, params = KECHO_MODES[server]
    cap = 8
    timeouts = {"header_timeout": 60} if module == "khttpd" else {}
    helpers.load(module, port=port, max_conns=cap, idle_timeout=60, **params, **timeouts)
    before = helpers.meminfo_kib("MemAvailable")
    hostile = [helpers.connect(port) for _ in range(cap)]
    extra: list[socket.socket] = []
    try:
        for s in hostile:
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")  # never completes, never idle long
        assert helpers.poll_until(lambda: served_here(port) == cap, 5.0)

        with helpers.connect(port) as honest:
            assert helpers.closed_by_peer(honest, 3.0), "past max_conns, not refused"
        assert "at max_conns (8): connection refused" in helpers.dmesg()

        # A flood past the cap costs nothing lasting: each is closed at accept.
        extra = [helpers.connect(port) for _ in range(200)]
        assert all(helpers.closed_by_peer(s, 3.0) for s in extra)
        assert served_here(port) == cap
        if module == "kecho" and params["mode"] == "kthread":
            assert len(helpers.threads_named("kecho/")) <= cap
        assert before - helpers.meminfo_kib("MemAvailable") < 64 * 1024

        # A slot freed is a slot an honest client gets.
        hostile.pop().close()
        assert helpers.poll_until(lambda: served_here(port) == cap - 1, 5.0)
        with helpers.connect(port) as honest:
            if module == "khttpd":
                honest.sendall(PAGE_REQUEST)
                assert helpers.read_exactly(honest, 15) == b"HTTP/1.1 200 OK"
            else:
                assert helpers.exchange(honest, b"served", 6) == b"served"

        took = helpers.unload(module)
        assert took < 2.0, f"rmmod with {cap - 1} hostile clients took {took:.2f}s"
    finally:
        for s in hostile + extra:
            s.close()
