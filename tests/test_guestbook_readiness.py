"""The guestbook on the readiness loop (select, poll, epoll, epoll-et) and its Redis pool.

First the pool's bookkeeping alone (:mod:`servers.drivers.redis_pool`, no I/O):
which connection carries which call, FIFO waiters, growth up to the limit,
failures, cancellation and deadlines. Then the servers over real sockets and a
private Redis, which counts the pool's connections itself (``INFO``): many
clients waiting on Redis at once, growth bounded by ``--backend-pool``, a client
reset while its call is in flight, SIGTERM with calls in flight, and select's
FD_SETSIZE ceiling reached by a Redis descriptor. Every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from bench import redis as zredis
from servers.cli import raise_descriptor_limit
from servers.core import resp
from servers.core.guestbook import BackendCall
from servers.drivers.redis_pool import Close, Done, Link, Open, RedisPool, Send
from servers.registry import BY_NAME, Entry
from tests.servers import RunningServer, running_server
from tests.test_guestbook_servers import read_responses, status

LOOPS = [BY_NAME[name] for name in ("select", "poll", "epoll", "epoll-et")]
GET = b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n"
CALL = BackendCall(resp.encode_pipeline([("INCR", "k"), ("GET", "k")]), 2)
REPLIES = b":1\r\n$1\r\n1\r\n"


# -- the pool's bookkeeping, without I/O ------------------------------------------------


def opened(pool: RedisPool) -> list[Link]:
    """The links the pool asked to open since last asked; nothing else may be asked."""
    effects = pool.take_effects()
    assert all(isinstance(e, Open) for e in effects), effects
    return [e.link for e in effects]  # type: ignore[union-attr]


def answer(pool: RedisPool, link: Link, now: float = 0.0) -> None:
    """Play Redis: take the call's bytes, reply to it."""
    assert bytes(link.output) == CALL.commands
    pool.sent(link, len(link.output))
    pool.received(link, REPLIES, now)


def test_pool_grows_to_its_limit_then_queues_fifo() -> None:
    pool = RedisPool(limit=2, reply_timeout=5.0)
    for owner in "abcd":
        pool.submit(owner, CALL, 0.0)
    first, second = opened(pool)
    assert pool.size == 2 and pool.waiting == 2
    pool.connected(first, 0.0)
    pool.connected(second, 0.0)
    assert pool.take_effects() == [Send(first), Send(second)]
    answer(pool, second)
    # b's replies; c (first in line) takes the freed connection at once.
    assert pool.take_effects() == [Done("b", [1, b"1"]), Send(second)]
    answer(pool, first)
    assert pool.take_effects() == [Done("a", [1, b"1"]), Send(first)]
    answer(pool, second)
    answer(pool, first)
    assert pool.take_effects() == [Done("c", [1, b"1"]), Done("d", [1, b"1"])]
    assert pool.size == 2 and pool.waiting == 0
    pool.submit("e", CALL, 0.0)  # an idle connection: nothing opened
    assert pool.take_effects() == [Send(first)]


def test_replies_in_pieces_and_split_writes() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    pool.submit("a", CALL, 0.0)
    (link,) = opened(pool)
    pool.connected(link, 0.0)
    pool.take_effects()
    pool.sent(link, 3)
    assert bytes(link.output) == CALL.commands[3:]
    pool.sent(link, len(link.output))
    for i in range(len(REPLIES)):
        pool.received(link, REPLIES[i:i + 1], 0.0)
    assert pool.take_effects() == [Done("a", [1, b"1"])]


def test_a_failed_connection_fails_its_call_and_the_next_waiter_opens_one() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    pool.submit("a", CALL, 0.0)
    pool.submit("b", CALL, 0.0)
    (link,) = opened(pool)
    pool.failed(link, 0.0)
    effects = pool.take_effects()
    assert effects[:2] == [Close(link), Done("a", None)]
    assert isinstance(effects[2], Open) and effects[2].link is not link
    assert pool.size == 1 and not link.alive
    pool.received(link, REPLIES, 0.0)  # late events for a dead link are ignored
    pool.failed(link, 0.0)
    assert pool.take_effects() == []


@pytest.mark.parametrize("garbage", [b"!not resp\r\n", REPLIES + b"+extra\r\n"])
def test_garbage_or_extra_replies_close_the_connection(garbage: bytes) -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    pool.submit("a", CALL, 0.0)
    (link,) = opened(pool)
    pool.connected(link, 0.0)
    pool.take_effects()
    pool.sent(link, len(link.output))
    pool.received(link, garbage, 0.0)
    effects = pool.take_effects()
    assert Close(link) in effects and pool.size == 0
    assert [e for e in effects if isinstance(e, Done)] in (
        [Done("a", None)], [Done("a", [1, b"1"])])


def test_an_idle_connection_that_speaks_or_closes_is_dropped() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    pool.submit("a", CALL, 0.0)
    (link,) = opened(pool)
    pool.connected(link, 0.0)
    answer(pool, link)
    pool.take_effects()
    pool.received(link, b"+surprise\r\n", 0.0)
    assert pool.take_effects() == [Close(link)] and pool.size == 0
    pool.submit("b", CALL, 0.0)
    assert len(opened(pool)) == 1  # the next call opens a new one


def test_cancelled_calls_are_skipped_or_their_replies_dropped() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    for owner in "abc":
        pool.submit(owner, CALL, 0.0)
    (link,) = opened(pool)
    pool.cancel("b")  # waiting: skipped
    pool.cancel("a")  # connecting: the connection is kept for the next call
    assert not pool.busy("a") and pool.busy("c")
    pool.connected(link, 0.0)
    assert pool.take_effects() == [Send(link)]
    pool.cancel("c")  # in flight: its replies are read and dropped
    answer(pool, link)
    assert pool.take_effects() == [] and pool.size == 1
    pool.submit("a", CALL, 0.0)  # the owner may call again
    assert pool.take_effects() == [Send(link)]
    with pytest.raises(RuntimeError):
        pool.submit("a", CALL, 0.0)


def test_deadlines_connect_reply_and_waiting() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0, connect_timeout=2.0)
    pool.submit("a", CALL, 0.0)
    pool.submit("b", CALL, 1.0)
    (link,) = opened(pool)
    pool.expire(1.9)
    assert pool.take_effects() == []
    pool.expire(2.0)  # the connect took too long: a fails, b gets a new connection
    effects = pool.take_effects()
    assert effects[:2] == [Close(link), Done("a", None)]
    (second,) = [e.link for e in effects[2:] if isinstance(e, Open)]
    pool.connected(second, 2.5)
    assert pool.take_effects() == [Send(second)]
    pool.expire(7.4)
    assert pool.take_effects() == []
    pool.expire(7.5)  # no reply within the reply timeout of the call's start
    assert pool.take_effects() == [Close(second), Done("b", None)]
    # A call kept waiting longer than the reply timeout fails without a connection.
    pool.submit("c", CALL, 10.0)
    (third,) = opened(pool)
    pool.connected(third, 10.0)
    pool.take_effects()
    pool.submit("d", CALL, 11.0)
    pool.expire(15.0)  # c's reply is due at 15: c fails, d takes the new connection
    effects = pool.take_effects()
    assert effects[:2] == [Close(third), Done("c", None)]
    (fourth,) = [e.link for e in effects[2:] if isinstance(e, Open)]
    pool.submit("e", CALL, 12.0)
    pool.expire(17.0)  # e waited its whole reply timeout; d's connect took too long
    assert pool.take_effects() == [Done("e", None), Close(fourth), Done("d", None)]


def test_close_fails_everything_and_later_calls() -> None:
    pool = RedisPool(limit=1, reply_timeout=5.0)
    pool.submit("a", CALL, 0.0)
    pool.submit("b", CALL, 0.0)
    (link,) = opened(pool)
    pool.close()
    assert pool.take_effects() == [Close(link), Done("a", None), Done("b", None)]
    pool.submit("c", CALL, 0.0)
    assert pool.take_effects() == [Done("c", None)]
    assert pool.size == 0


# -- the servers ------------------------------------------------------------------------


@pytest.fixture
def redis(shared_redis: zredis.PrivateRedis) -> Iterator[zredis.Client]:
    """A connection to the module's Redis for counting, once the previous test's
    server connections have left it."""
    with zredis.Client(shared_redis.addr) as client:
        wait_until(client, connected=0)
        yield client


def counts(client: zredis.Client) -> dict[str, int]:
    """Redis's own count of other clients: connected, blocked, and connections ever made."""
    raw = client.call("INFO", "clients") + client.call("INFO", "stats")  # type: ignore[operator]
    info = dict(line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)
    return {"connected": int(info["connected_clients"]) - 1,
            "blocked": int(info["blocked_clients"]),
            "made": int(info["total_connections_received"])}


def wait_until(client: zredis.Client, timeout: float = 10.0, **want: int) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = counts(client)
        if all(now[key] == value for key, value in want.items()):
            return now
        assert time.monotonic() < deadline, f"Redis counts {now}, waiting for {want}"
        time.sleep(0.01)


def open_clients(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def terminate(srv: RunningServer) -> tuple[int | None, float]:
    """SIGTERM; the exit code (None if alive after 5 s) and the seconds it took."""
    srv.descendants = srv.tree()[1:]
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = srv.proc.wait(5.0)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - start


def no_traceback(srv: object) -> None:
    err = srv.stderr_text()  # type: ignore[attr-defined]
    assert "Traceback" not in err, err


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_many_clients_share_a_bounded_pool(entry: Entry, redis: zredis.Client,
                                           shared_redis: zredis.PrivateRedis) -> None:
    """24 clients, a 150 ms wait, --backend-pool 4: all answered; Redis sees exactly 4
    connections blocked at most, and since a call holds its connection, at least six
    waits in a row."""
    n, pool, wait = 24, 4, 0.15
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", str(int(wait * 1000)),
                        "--backend-pool", str(pool)) as srv:
        socks = open_clients(srv.port, n)
        try:
            made = counts(redis)["made"]
            start = time.monotonic()
            for s in socks:
                s.sendall(GET)
            peak = wait_until(redis, blocked=pool)
            assert peak["connected"] == pool
            for s in socks:
                (page,) = read_responses(s, 1, timeout=30)
                assert status(page) == 200
            took = time.monotonic() - start
            assert took >= (n // pool) * wait * 0.9, took
            after = counts(redis)
            assert after["made"] - made == pool and after["connected"] == pool
            # A second round reuses the idle connections.
            for s in socks[:pool]:
                s.sendall(GET)
            for s in socks[:pool]:
                assert status(read_responses(s, 1, timeout=30)[0]) == 200
            assert counts(redis)["made"] - made == pool
        finally:
            for s in socks:
                s.close()
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_a_client_reset_mid_call_leaves_the_connection_to_the_next(
        entry: Entry, redis: zredis.Client, shared_redis: zredis.PrivateRedis) -> None:
    """--backend-pool 1: a client resets while its call blocks in Redis, another waits
    behind it; the first reply is dropped, the second client is answered on the same
    Redis connection, and the server lives on."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "300", "--backend-pool", "1") as srv:
        gone, waiting = open_clients(srv.port, 2)
        try:
            made = counts(redis)["made"]
            gone.sendall(GET)
            wait_until(redis, blocked=1)
            waiting.sendall(GET)
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()  # an RST
            (page,) = read_responses(waiting, 1, timeout=10)
            assert status(page) == 200
            assert counts(redis)["made"] - made == 1
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
            assert [status(r) for r in read_responses(waiting, 2, timeout=10)] == [200, 200]
        finally:
            waiting.close()
        assert srv.proc.poll() is None
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_sigterm_with_calls_in_flight(entry: Entry, redis: zredis.Client,
                                      shared_redis: zredis.PrivateRedis) -> None:
    """Calls that end within the grace are answered; the server exits 0 within 2 s and
    closes its Redis connections."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "400") as srv:
        socks = open_clients(srv.port, 5)
        try:
            for s in socks:
                s.sendall(GET)
            wait_until(redis, blocked=5)
            code, took = terminate(srv)
            assert code == 0 and took < 2.0, (code, took)
            for s in socks:
                (page,) = read_responses(s, 1, timeout=5)
                assert status(page) == 200
                assert s.recv(1) == b""
        finally:
            for s in socks:
                s.close()
        wait_until(redis, connected=0, timeout=5)
        no_traceback(srv)


@pytest.mark.parametrize("entry", LOOPS, ids=[e.name for e in LOOPS])
def test_sigterm_with_a_call_longer_than_the_grace(entry: Entry, redis: zredis.Client,
                                                   shared_redis: zredis.PrivateRedis) -> None:
    """A 10 s wait outlives the 1 s grace: the client gets a 503 at the end of it,
    not a silent close, and the server exits 0 within 2 s."""
    with running_server(entry, "http", "--redis", str(shared_redis.addr),
                        "--backend-wait-ms", "10000") as srv:
        (s,) = open_clients(srv.port, 1)
        with s:
            s.sendall(GET)
            wait_until(redis, blocked=1)
            code, took = terminate(srv)
            assert code == 0 and took < 2.0, (code, took)
            (page,) = read_responses(s, 1, timeout=5)
            assert status(page) == 503
        wait_until(redis, connected=0, timeout=5)
        no_traceback(srv)


def test_select_redis_descriptor_above_fd_setsize_fails_the_call(
        redis: zredis.Client, shared_redis: zredis.PrivateRedis) -> None:
    """With every descriptor below 1024 held by clients, a guestbook call cannot get a
    Redis socket select can watch: 503, the other routes served, nothing crashes; once
    clients leave, the guestbook is served again."""
    if raise_descriptor_limit() < 2200:
        pytest.skip("needs RLIMIT_NOFILE of 2200 for 1024 clients and their server")
    with running_server("select", "http", "--redis", str(shared_redis.addr)) as srv:
        socks: list[socket.socket] = []
        try:
            # More clients than select can watch: the server accepts in order, so once
            # it has refused the last one (its descriptor was 1024), every descriptor
            # below 1024 is held by a client.
            socks = open_clients(srv.port, 1040)
            last = socks.pop()
            last.settimeout(10)
            assert last.recv(1) == b""
            last.close()
            first = socks[0]
            first.sendall(GET)
            (page,) = read_responses(first, 1, timeout=10)
            assert status(page) == 503
            first.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status(read_responses(first, 1, timeout=10)[0]) == 200
            for s in socks[1:100]:
                s.close()
            del socks[1:100]
            first.sendall(GET)
            assert status(read_responses(first, 1, timeout=10)[0]) == 200
        finally:
            for s in socks:
                s.close()
        assert srv.proc.poll() is None
        assert "a Redis connection would take descriptor" in srv.stderr_text()
        no_traceback(srv)
