"""The guestbook's Redis pool on the asyncio, uvloop and trio servers.

What is specific to these models: many clients wait on Redis at once over a pool
of Redis connections that grows on demand up to ``--backend-pool`` (a call per
connection at a time, the rest queued); a client that goes away while its call
is in flight or queued; Redis unreachable with more calls than connections; a
graceful stop with calls in flight; a burst of unix connects beyond Redis's
accept backlog. Real sockets, a private Redis (whose own ``INFO clients`` counts
the pool's connections), every wait bounded.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import struct
import time

import pytest

from bench import redis as zredis
from servers.core.guestbook import VISITS_KEY
from servers.drivers.blocking_backend import REPLY_SLACK
from servers.registry import BY_NAME, Entry
from tests.private_redis import private_redis
from tests.servers import running_server
from tests.test_guestbook_servers import exchange, read_responses, status

LOOPS = [BY_NAME[name] for name in ("asyncio", "uvloop", "trio")]
GET = b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def redis(shared_redis: zredis.PrivateRedis) -> zredis.PrivateRedis:
    """The module's Redis, once the previous test's connections have left it."""
    wait_for(shared_redis.addr, connected=0, timeout=5)
    return shared_redis


def clients(addr: zredis.RedisAddr) -> tuple[int, int]:
    """(connected, blocked) Redis clients, not counting the connection that asks."""
    info = zredis.info(addr, "clients")
    return int(info["connected_clients"]) - 1, int(info["blocked_clients"])


def wait_for(addr: zredis.RedisAddr, connected: int | None = None, blocked: int | None = None,
             timeout: float = 10.0) -> tuple[int, int]:
    """Poll Redis until it counts that many clients (bounded); return the last counts."""
    deadline = time.monotonic() + timeout
    while True:
        now = clients(addr)
        if (connected is None or now[0] == connected) and (blocked is None or now[1] == blocked):
            return now
        assert time.monotonic() < deadline, f"Redis clients (connected, blocked): {now}"
        time.sleep(0.01)


def visits(addr: zredis.RedisAddr) -> int:
    with zredis.Client(addr) as c:
        value = c.call("GET", VISITS_KEY)
    return int(value) if isinstance(value, bytes) else 0


def open_clients(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def reset(sock: socket.socket) -> None:
    """Close with an RST, as a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def no_traceback(srv: object) -> None:
    err = srv.stderr_text()  # type: ignore[attr-defined]
    assert "Traceback" not in err and "Exception" not in err, err


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_many_clients_wait_on_redis_at_once(entry: Entry, redis: zredis.PrivateRedis) -> None:
    """30 clients with a 3 s backend wait: 30 Redis connections blocked together, all
    answered, and the pool keeps them (a second round opens none)."""
    n = 30
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "3000") as srv:
        socks = open_clients(srv.port, n)
        try:
            before = visits(redis.addr)
            for s in socks:
                s.sendall(GET)
            wait_for(redis.addr, connected=n, blocked=n)
            for s in socks:
                (page,) = read_responses(s, 1, timeout=20)
                assert status(page) == 200
            assert visits(redis.addr) == before + n
            assert clients(redis.addr) == (n, 0)  # idle in the pool, not closed
        finally:
            for s in socks:
                s.close()
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_pool_growth_is_bounded(entry: Entry, redis: zredis.PrivateRedis) -> None:
    """--backend-pool 2, 8 clients with a 300 ms wait: never more than 2 Redis
    connections, one call on each at a time, so at least 4 waits in a row."""
    n, pool, wait = 8, 2, 0.3
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", str(wait * 1000),
                        "--backend-pool", str(pool)) as srv:
        socks = open_clients(srv.port, n)
        sel = selectors.DefaultSelector()
        try:
            before = visits(redis.addr)
            start = time.monotonic()
            for s in socks:
                s.sendall(GET)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, bytearray())
            most = (0, 0)
            done = 0
            deadline = start + 30
            while done < n:
                assert time.monotonic() < deadline, f"{done} of {n} answered"
                now = clients(redis.addr)
                most = (max(most[0], now[0]), max(most[1], now[1]))
                for key, _ in sel.select(0.02):
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    assert chunk, "closed before its answer"
                    key.data.extend(chunk)
                    if key.data.startswith(b"HTTP/1.1 200 ") and b"</html>" in key.data:
                        sel.unregister(key.fileobj)
                        done += 1
            took = time.monotonic() - start
        finally:
            sel.close()
            for s in socks:
                s.close()
        assert most[0] <= pool and most[1] <= pool, most
        assert most[1] >= 1
        assert took >= (n // pool) * wait * 0.9, f"{n} calls over {pool} took {took:.2f} s"
        assert visits(redis.addr) == before + n
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_client_that_resets_while_its_call_is_pending(entry: Entry,
                                                      redis: zredis.PrivateRedis) -> None:
    """Pool of 1: A's call in flight, B's queued behind it; both reset. The server
    drops A's answer when it comes, reuses the connection, and answers C."""
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "600", "--backend-pool", "1") as srv:
        before = visits(redis.addr)
        a, b, c = open_clients(srv.port, 3)
        try:
            a.sendall(GET)
            wait_for(redis.addr, connected=1, blocked=1)
            b.sendall(GET)
            reset(a)
            reset(b)
            c.sendall(GET)
            (page,) = read_responses(c, 1, timeout=20)
            assert status(page) == 200
            c.sendall(GET)
            (again,) = read_responses(c, 1)
            assert status(again) == 200
        finally:
            c.close()
        assert clients(redis.addr)[0] == 1  # the one connection, reused throughout
        # A's call was sent before its reset, C made two. Nobody reads a client whose
        # call is pending (bounded memory), so B's reset is seen when its answer is
        # written if the server had read B's request first, or at once if not.
        assert visits(redis.addr) - before in (3, 4)
        assert srv.proc.poll() is None
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_waiting_for_redis_is_not_idle(entry: Entry, redis: zredis.PrivateRedis) -> None:
    """A backend wait longer than the idle timeout: the client is answered, not closed,
    and the idle timeout still applies once it has its answer."""
    with running_server(entry, "http", "--redis", str(redis.addr), "--idle-timeout", "0.5",
                        "--backend-wait-ms", "1200") as srv:
        with srv.connect() as s:
            s.sendall(GET + GET)
            assert [status(r) for r in read_responses(s, 2)] == [200, 200]
            start = time.monotonic()
            s.settimeout(10)
            assert s.recv(65536) == b""  # idle again: closed by the idle timeout
            assert time.monotonic() - start < 5
        no_traceback(srv)


def test_redis_too_slow_gives_503_then_recovers(redis: zredis.PrivateRedis) -> None:
    """Redis paused (CLIENT PAUSE) past the reply timeout (the wait, 0 here, + 5 s):
    every loop answers 503 at its timeout, then 200 on a new connection. The three
    servers share one pause, so the test waits once."""
    pause = 9.0
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(e, "http", "--redis", str(redis.addr)))
                   for e in LOOPS]
        for srv in servers:
            assert status(exchange(srv.port, GET)[0]) == 200  # a connection in each pool
        socks = [stack.enter_context(srv.connect()) for srv in servers]
        with zredis.Client(redis.addr) as c:
            assert c.call("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL") == b"OK"
        paused_at = time.monotonic()
        for s in socks:
            s.sendall(GET)
        for srv, s in zip(servers, socks, strict=True):
            (answer,) = read_responses(s, 1, timeout=pause + 5)
            took = time.monotonic() - paused_at
            assert status(answer) == 503, srv.entry.name
            assert REPLY_SLACK * 0.95 <= took < pause, f"{srv.entry.name}: {took:.1f} s"
        with zredis.Client(redis.addr, timeout=pause + 5) as c:
            assert c.call("PING") == b"PONG"  # the pause is over
        for srv in servers:
            assert status(exchange(srv.port, GET)[0]) == 200, srv.entry.name
            no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_redis_unreachable_with_more_calls_than_connections(entry: Entry) -> None:
    """Nothing listens at the Redis address: every call of 6 clients over a pool of 2
    gets its 503 promptly, and other routes are served."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with running_server(entry, "http", "--redis", dead, "--backend-pool", "2") as srv:
        socks = open_clients(srv.port, 6)
        try:
            for s in socks:
                s.sendall(GET + GET)
            for s in socks:
                assert [status(r) for r in read_responses(s, 2, timeout=10)] == [503, 503]
            socks[0].sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status(read_responses(socks[0], 1)[0]) == 200
        finally:
            for s in socks:
                s.close()
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_sigterm_lets_calls_in_flight_finish(entry: Entry, redis: zredis.PrivateRedis) -> None:
    """SIGTERM while 6 calls wait in Redis (500 ms): all answered, exit 0 within 2 s,
    the pool's connections closed."""
    n = 6
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "500") as srv:
        socks = open_clients(srv.port, n)
        try:
            for s in socks:
                s.sendall(GET)
            wait_for(redis.addr, connected=n, blocked=n)
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            for s in socks:
                (page,) = read_responses(s, 1)
                assert status(page) == 200
        finally:
            for s in socks:
                s.close()
        wait_for(redis.addr, connected=0, timeout=5)
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_sigterm_with_calls_longer_than_the_grace(entry: Entry,
                                                  redis: zredis.PrivateRedis) -> None:
    """A 10 s backend wait does not hold the stop: exit 0 within 2 s, the clients
    closed without an answer, the pool's connections closed."""
    n = 3
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "10000") as srv:
        socks = open_clients(srv.port, n)
        try:
            for s in socks:
                s.sendall(GET)
            wait_for(redis.addr, connected=n, blocked=n)
            start = time.monotonic()
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            assert time.monotonic() - start < 2.0
            for s in socks:
                s.settimeout(5)
                try:
                    assert s.recv(65536) == b""
                except ConnectionResetError:
                    pass
        finally:
            for s in socks:
                s.close()
        wait_for(redis.addr, connected=0, blocked=0, timeout=5)


def test_trio_reuses_no_stream_redis_closed() -> None:
    """Redis restarted between calls: the pool's idle streams are dead, and the next
    calls are answered 200 on new ones, not 503 on a dead one. trio reads no idle
    stream, so it checks each before reuse. (The asyncio loops read every connection
    and drop one when Redis closes it; checking that from here would race the loop.)"""
    entry = BY_NAME["trio"]
    with private_redis() as own, running_server(entry, "http", "--redis", str(own.tcp_addr),
                             "--backend-wait-ms", "200") as srv:
        socks = open_clients(srv.port, 3)
        try:
            for s in socks:
                s.sendall(GET)
            wait_for(own.addr, connected=3, blocked=3)
            for s in socks:
                assert status(read_responses(s, 1)[0]) == 200
            own.stop()
            own.start()
            for s in socks:  # one at a time: each takes an idle, now dead, connection
                s.sendall(GET)
                assert status(read_responses(s, 1)[0]) == 200
        finally:
            for s in socks:
                s.close()
        no_traceback(srv)
