"""The guestbook on the io_uring servers: the Redis I/O submitted to the same ring.

What is specific to this model, over real sockets and a private Redis that counts
the pool's connections itself (``INFO``): many clients waiting on Redis at once
over a pool that grows on demand up to ``--backend-pool`` and no further; a
client reset while its call is in flight (its replies dropped, the connection
left to the next call); a client waiting longer than its idle timeout for its
call; the TCP connect made on the ring, to a host name resolved at start, to a
Redis that refuses, and to a Redis lost while calls block in it; SIGTERM with
calls in flight and with a call longer than the grace. Both receive modes
(``io_uring``: multishot, ``io_uring-single``). Every wait is bounded; the
tests skip, with the server's reason, where the machine cannot run io_uring.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from bench import redis as zredis
from servers.redis_addr import RedisAddr
from servers.registry import BY_NAME, Entry
from tests.private_redis import private_redis
from tests.servers import RunningServer, running_server
from tests.test_guestbook_servers import read_responses, status

RINGS = [BY_NAME[name] for name in ("io_uring", "io_uring-single")]
IDS = [e.name for e in RINGS]
GET = b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n"
PAGE = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def counter(shared_redis: zredis.PrivateRedis) -> Iterator[zredis.Client]:
    """A connection that asks the module's Redis for its counts, once the previous
    test's server connections have left it."""
    with zredis.Client(shared_redis.addr) as client:
        wait_until(client, connected=0)
        yield client


def counts(client: zredis.Client) -> dict[str, int]:
    """Redis's own count of the other clients: connected, blocked, connections ever made."""
    raw = client.call("INFO", "clients") + client.call("INFO", "stats")  # type: ignore[operator]
    info = dict(line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)
    return {"connected": int(info["connected_clients"]) - 1,
            "blocked": int(info["blocked_clients"]),
            "made": int(info["total_connections_received"])}


def wait_until(client: zredis.Client, timeout: float = 10.0, **want: int) -> dict[str, int]:
    """Poll Redis (bounded) until its counts are ``want``; return them."""
    deadline = time.monotonic() + timeout
    while True:
        now = counts(client)
        if all(now[key] == value for key, value in want.items()):
            return now
        assert time.monotonic() < deadline, f"Redis counts {now}, waiting for {want}"
        time.sleep(0.01)


def open_clients(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def healthy(srv: RunningServer) -> None:
    assert srv.proc.poll() is None
    err = srv.stderr_text()
    assert "Traceback" not in err, err


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_many_clients_share_a_pool_bounded_by_backend_pool(
        entry: Entry, counter: zredis.Client, shared_redis: zredis.PrivateRedis) -> None:
    """24 clients, a 150 ms wait, --backend-pool 4: all answered; Redis sees 4
    connections at most, all blocked at once, and since a call holds its connection,
    six waits in a row; a second round reuses them."""
    n, pool, wait = 24, 4, 0.15
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", str(int(wait * 1000)),
                        "--backend-pool", str(pool)) as srv:
        socks = open_clients(srv.port, n)
        try:
            made = counts(counter)["made"]
            start = time.monotonic()
            for s in socks:
                s.sendall(GET)
            peak = wait_until(counter, blocked=pool)
            assert peak["connected"] == pool
            for s in socks:
                (page,) = read_responses(s, 1, timeout=30)
                assert status(page) == 200
            took = time.monotonic() - start
            assert took >= (n // pool) * wait * 0.9, took
            after = counts(counter)
            assert after["made"] - made == pool and after["connected"] == pool
            for s in socks[:pool]:
                s.sendall(GET)
            for s in socks[:pool]:
                assert status(read_responses(s, 1, timeout=30)[0]) == 200
            assert counts(counter)["made"] - made == pool
        finally:
            for s in socks:
                s.close()
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_a_client_reset_mid_call_leaves_the_connection_to_the_next(
        entry: Entry, counter: zredis.Client, shared_redis: zredis.PrivateRedis) -> None:
    """--backend-pool 1: a client resets while its call blocks in Redis, a second one
    waits behind it; the first replies are dropped, the second client is answered on
    the same Redis connection, and the server lives on."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "300", "--backend-pool", "1") as srv:
        gone, waiting = open_clients(srv.port, 2)
        try:
            made = counts(counter)["made"]
            gone.sendall(GET)
            wait_until(counter, blocked=1)
            waiting.sendall(GET)
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()  # an RST
            (page,) = read_responses(waiting, 1, timeout=10)
            assert status(page) == 200
            assert counts(counter)["made"] - made == 1
            waiting.sendall(PAGE + GET)
            assert [status(r) for r in read_responses(waiting, 2, timeout=10)] == [200, 200]
        finally:
            waiting.close()
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_a_call_longer_than_the_idle_timeout_is_answered(
        entry: Entry, shared_redis: zredis.PrivateRedis) -> None:
    """A client waiting on its call is not idle: a 1.2 s wait outlives --idle-timeout
    0.4 and is still answered, and the connection then times out as usual."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "1200", "--idle-timeout", "0.4") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(GET)
            (page,) = read_responses(s, 1, timeout=10)
            assert status(page) == 200
            s.settimeout(10)
            assert s.recv(1) == b""  # then idle: closed on time
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_tcp_connect_on_the_ring_to_a_host_name(entry: Entry,
                                                shared_redis: zredis.PrivateRedis) -> None:
    """--redis localhost:PORT: the name is resolved at start, the connects are ring
    operations; several calls at once open several connections."""
    name = RedisAddr(host="localhost", port=shared_redis.tcp_addr.port)
    with running_server(entry, "http", "--redis", str(name), "--backend-wait-ms", "50",
                        "--backend-pool", "3") as srv:
        socks = open_clients(srv.port, 6)
        try:
            for s in socks:
                s.sendall(GET + PAGE)
            for s in socks:
                assert [status(r) for r in read_responses(s, 2, timeout=10)] == [200, 200]
        finally:
            for s in socks:
                s.close()
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_redis_refusing_fails_every_call_then_recovery(entry: Entry) -> None:
    """More calls than --backend-pool to a Redis that is not there (TCP, refused on the
    ring's connect): every one answered 503, waiters included, the page still served;
    Redis started at that address: answered 200, no restart."""
    with private_redis() as own, running_server(entry, "http", "--redis", str(own.tcp_addr),
                             "--backend-pool", "2") as srv:
        own.stop()
        socks = open_clients(srv.port, 6)
        try:
            for s in socks:
                s.sendall(GET + PAGE)
            for s in socks:
                assert [status(r) for r in read_responses(s, 2, timeout=10)] == [503, 200]
            own.start()
            for s in socks:
                s.sendall(GET)
            for s in socks:
                assert status(read_responses(s, 1, timeout=10)[0]) == 200
        finally:
            for s in socks:
                s.close()
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_redis_lost_while_calls_block_in_it(entry: Entry) -> None:
    """Redis stopped while calls block in it (and more wait for a connection): each
    client gets a 503, none waits for its reply timeout; back, then 200."""
    with private_redis() as own, running_server(entry, "http", "--redis", str(own.tcp_addr),
                             "--backend-wait-ms", "3000", "--backend-pool", "2") as srv:
        socks = open_clients(srv.port, 4)
        try:
            with zredis.Client(own.tcp_addr) as probe:
                for s in socks:
                    s.sendall(GET)
                wait_until(probe, blocked=2)
            start = time.monotonic()
            own.stop()
            for s in socks:
                (page,) = read_responses(s, 1, timeout=10)
                assert status(page) == 503
            assert time.monotonic() - start < 2.5
            own.start()
            socks[0].sendall(GET)
            assert status(read_responses(socks[0], 1, timeout=10)[0]) == 200
        finally:
            for s in socks:
                s.close()
        healthy(srv)


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_sigterm_with_calls_in_flight(entry: Entry, counter: zredis.Client,
                                      shared_redis: zredis.PrivateRedis) -> None:
    """Calls that end within the grace are answered, then the connections close; the
    server exits 0 within 2 s and closes its Redis connections."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "400") as srv:
        socks = open_clients(srv.port, 5)
        try:
            for s in socks:
                s.sendall(GET)
            wait_until(counter, blocked=5)
            start = time.monotonic()
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            assert time.monotonic() - start < 2.0
            for s in socks:
                (page,) = read_responses(s, 1, timeout=5)
                assert status(page) == 200
                assert s.recv(1) == b""
        finally:
            for s in socks:
                s.close()
        wait_until(counter, connected=0, timeout=5)
        assert "Traceback" not in srv.stderr_text()


@pytest.mark.parametrize("entry", RINGS, ids=IDS)
def test_sigterm_with_a_call_longer_than_the_grace(entry: Entry, counter: zredis.Client,
                                                   shared_redis: zredis.PrivateRedis) -> None:
    """A 10 s wait outlives the 1 s grace: the client gets a 503 at the end of it, not
    a silent close, and the server exits 0 within 2 s."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "10000") as srv:
        (s,) = open_clients(srv.port, 1)
        with s:
            s.sendall(GET)
            wait_until(counter, blocked=1)
            start = time.monotonic()
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            assert time.monotonic() - start < 2.0
            (page,) = read_responses(s, 1, timeout=5)
            assert status(page) == 503
        wait_until(counter, connected=0, timeout=5)
        assert "Traceback" not in srv.stderr_text()


def listen_queue(path: str) -> int:
    """How many connections wait in the accept backlog of the unix listener ``path``."""
    out = subprocess.run(["ss", "-xlnH", "src", path], capture_output=True, text=True,
                         timeout=10, check=True).stdout.split()
    return int(out[2]) if len(out) > 2 else 0


# Every event loop's Redis pool meets the same full backlog and retries the same way
# (servers/drivers/redis_connect.py): the readiness loop, asyncio, uvloop, trio.
BACKLOG_SERVERS = RINGS + [BY_NAME[name] for name in ("epoll", "poll", "asyncio", "uvloop",
                                                      "trio")]


@pytest.mark.parametrize("entry", BACKLOG_SERVERS, ids=[e.name for e in BACKLOG_SERVERS])
def test_unix_connects_beyond_the_redis_backlog_are_tried_again(entry: Entry) -> None:
    """Redis stopped (SIGSTOP) while 700 calls at once open 700 unix connections: its
    backlog takes 512, the rest are refused with EAGAIN and tried again; Redis resumed
    within the connect timeout, every call is answered 200, none 503."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see Redis's accept backlog")
    with private_redis() as own, running_server(entry, "http", "--redis", str(own.addr)) as srv:
        pid = int(zredis.info(own.addr)["process_id"])
        socks = open_clients(srv.port, 700)
        os.kill(pid, signal.SIGSTOP)
        try:
            for s in socks:
                s.sendall(GET)
            deadline = time.monotonic() + 10
            while listen_queue(own.addr.path) <= 511:  # full: the next connect is refused
                assert time.monotonic() < deadline, listen_queue(own.addr.path)
                time.sleep(0.01)
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            for s in socks:
                assert status(read_responses(s, 1, timeout=20)[0]) == 200
        finally:
            for s in socks:
                s.close()
        healthy(srv)
        assert "Exception" not in srv.stderr_text()
