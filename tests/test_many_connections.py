"""10,000 concurrent clients: every event-driven backend and ``threaded`` answers each.

One non-blocking epoll client in the test process opens the connections in
batches, sends one short line on each and checks every echo, keeping every
connection open until all have been answered, so the server really holds
10,000 at once. Then all 10,000 disconnect at once, and a new client must be
answered within 2 s (#10, class 6: ``threaded`` took about 50 s). ``select``
must show its documented refusal above FD_SETSIZE (the connections past it
closed, the others served, service going on), and ``iterative`` its
one-at-a-time model.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time
from dataclasses import dataclass, field

import pytest

from tests.clients import recv_exactly
from tests.servers import RunningServer, ids, running_server, user_space_entries

CLIENTS = 10_000
BATCH = 500
TIME_LIMIT = 50.0
# threaded: a new client's answer once 10,000 clients have left at once (#10, class 6).
# Mostly within 0.5 s, but the model's limit (servers/threaded.py, README) is a GIL
# convoy of several seconds in 3 runs of 39 (7.8 s, over 8 s twice); it took 80 s before.
AFTER_MASS_DISCONNECT = 20.0
MANY = [e for e in user_space_entries()
        if "echo" in e.protocols and (e.event_driven or e.name == "threaded")
        and e.name != "select"]


@dataclass
class Outcome:
    answered: int = 0
    closed: int = 0  # the server closed (or reset) the connection without answering
    failed: dict[int, str] = field(default_factory=dict)  # connect errors, wrong bytes
    socks: list[socket.socket] = field(default_factory=list)

    def close_all(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def _need_descriptors(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < n:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {n} descriptors needed")


def echo_many(address: tuple[str, int], n: int, batch: int = BATCH,
              time_limit: float = TIME_LIMIT) -> Outcome:
    """Open ``n`` connections (at most ``batch`` connecting at once), send ``b"<i>\\n"`` on
    each and read its echo. Every socket stays open (in ``Outcome.socks``)."""
    outcome = Outcome()
    sel = selectors.EpollSelector()
    expected: dict[int, bytes] = {}
    got: dict[int, bytearray] = {}
    index: dict[int, int] = {}
    connecting = 0
    started = 0
    done = 0
    deadline = time.monotonic() + time_limit
    try:
        while done < n:
            while started < n and connecting < batch:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                err = sock.connect_ex(address)
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    outcome.failed[started] = f"connect: {errno.errorcode.get(err, err)}"
                    started += 1
                    done += 1
                    continue
                outcome.socks.append(sock)
                index[sock.fileno()] = started
                sel.register(sock, selectors.EVENT_WRITE)
                started += 1
                connecting += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {done} of {n} clients finished in {time_limit} s "
                                     f"({outcome.answered} answered)")
            for key, events in sel.select(min(left, 1.0)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                i = index[sock.fileno()]
                if events & selectors.EVENT_WRITE:
                    connecting -= 1
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        outcome.failed[i] = f"connect: {errno.errorcode.get(err, err)}"
                        sel.unregister(sock)
                        done += 1
                        continue
                    message = b"%d\n" % i
                    expected[i] = message
                    got[i] = bytearray()
                    sock.send(message)  # a few bytes always fit in a fresh socket buffer
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    chunk = sock.recv(64)
                except ConnectionResetError:
                    chunk = b""
                except BlockingIOError:
                    continue
                if not chunk:
                    outcome.closed += 1
                    sel.unregister(sock)
                    done += 1
                    continue
                got[i] += chunk
                if len(got[i]) >= len(expected[i]):
                    if bytes(got[i]) == expected[i]:
                        outcome.answered += 1
                    else:
                        outcome.failed[i] = f"wrong echo {bytes(got[i])!r}"
                    sel.unregister(sock)
                    done += 1
    except BaseException:
        outcome.close_all()
        raise
    finally:
        sel.close()
    return outcome


def _still_serves(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"still here\n")
        assert recv_exactly(sock, 11) == b"still here\n"


def _answered_after_mass_disconnect(server: RunningServer, limit: float) -> float:
    """A new client's echo, timed from the moment all the others are closed."""
    start = time.monotonic()
    with server.connect(timeout=limit) as sock:
        sock.sendall(b"after the crowd\n")
        try:
            assert recv_exactly(sock, 16, timeout=limit) == b"after the crowd\n"
        except TimeoutError:
            pytest.fail(f"no answer {limit:.0f} s after {CLIENTS} clients disconnected at once")
    took = time.monotonic() - start
    assert took < limit, f"answered {took:.2f} s after {CLIENTS} clients disconnected at once"
    return took


@pytest.mark.parametrize("entry", MANY, ids=ids(MANY))
def test_ten_thousand_concurrent_clients(entry: object) -> None:
    _need_descriptors(CLIENTS + 200)
    with running_server(entry, "echo", "--backlog", "4096", "--idle-timeout", "120") as server:
        start = time.monotonic()
        outcome = echo_many(server.address, CLIENTS)
        try:
            took = time.monotonic() - start
            assert not outcome.failed, dict(list(outcome.failed.items())[:5])
            assert outcome.closed == 0
            assert outcome.answered == CLIENTS, f"{outcome.answered} answered in {took:.1f} s"
            _still_serves(server)  # the 10,001st, while the 10,000 are still open
        finally:
            outcome.close_all()  # all 10,000 at once
        if server.entry.name == "threaded":
            took = _answered_after_mass_disconnect(server, AFTER_MASS_DISCONNECT)
            print(f"answered {took:.2f} s after the mass disconnect")


def test_select_refuses_past_fd_setsize() -> None:
    """select(2) cannot watch a descriptor >= 1024: connections past that are closed at
    once, the ones below are served, and once some close the server accepts again."""
    n = 1500
    _need_descriptors(n + 200)
    with running_server("select", "echo", "--backlog", "4096", "--idle-timeout", "60") as server:
        outcome = echo_many(server.address, n, time_limit=30)
        try:
            assert not outcome.failed, dict(list(outcome.failed.items())[:5])
            # Below 1024 minus the server's own descriptors (stdio, listener, stop pipe).
            assert 1000 <= outcome.answered < 1024
            assert outcome.closed == n - outcome.answered
            assert "FD_SETSIZE" in server.stderr_text()
        finally:
            outcome.close_all()
        # The refused ones did not break the loop: with descriptors free again, it serves.
        again = echo_many(server.address, 100, time_limit=20)
        try:
            assert again.answered == 100, (again.closed, again.failed)
        finally:
            again.close_all()


def test_iterative_serves_one_at_a_time() -> None:
    with running_server("iterative", "echo", "--backlog", "4096") as server:
        first = server.connect()
        try:
            first.sendall(b"one\n")
            assert recv_exactly(first, 4) == b"one\n"
            with server.connect() as second:
                second.sendall(b"two\n")
                second.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    second.recv(4)  # not served while the first is connected
                first.close()
                assert recv_exactly(second, 4, timeout=5) == b"two\n"
        finally:
            first.close()
