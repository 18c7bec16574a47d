"""The HTTP session with the guestbook: backend calls interleaved with request bytes.

The session never touches a socket; this test plays the driver. Request bytes are
fed in random pieces; at random points the pending backend call is taken and
performed on a real private Redis, or the backend is declared lost. Whatever the
interleaving, every request gets its answer, in request order, and the visit
counter shows the guestbook GETs were performed in that order.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import redis as zredis
from servers.core import guestbook, resp, wire
from servers.core.http import HttpApp, HttpSession
from servers.core.session import FileSlice
from servers.settings import Settings

FORM = "Content-Type: application/x-www-form-urlencoded\r\n"
REQUESTS = {
    "page": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "missing": (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "book": (b"GET /guestbook HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "book-head": (b"HEAD /guestbook HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "sign": ((f"POST /guestbook HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: 17\r\n\r\n"
              "name=a&message=hi").encode(), 303),
    "bad-sign": ((f"POST /guestbook HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: 6\r\n\r\n"
                  "name=a").encode(), 400),
    "put": (b"PUT /guestbook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
}
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
LENGTH = re.compile(rb"\r\nContent-Length: (\d+)\r\n")
VISITS = re.compile(rb"Visits: (\d+)</p>")


@pytest.fixture(scope="module")
def redis(shared_redis: zredis.PrivateRedis) -> zredis.PrivateRedis:
    return shared_redis


def perform(client: zredis.Client, commands: bytes, count: int) -> list[object]:
    """Send raw RESP on the client's connection, read ``count`` replies."""
    sock = client._sock  # the test is the driver: raw bytes, as a driver writes them
    sock.sendall(commands)
    reader = resp.ReplyReader()
    deadline = time.monotonic() + 5
    while reader.available < count:
        assert time.monotonic() < deadline
        data = sock.recv(65536)
        assert data
        reader.feed(data)
    return reader.take(count)


def responses(data: bytes, heads_only: list[bool]) -> list[tuple[int, bytes]]:
    """Split the output into (status, body) per response, bodies by Content-Length."""
    out, pos = [], 0
    for head_only in heads_only:
        end = data.index(b"\r\n\r\n", pos) + 4
        head = data[pos:end]
        status = int(STATUS.match(head).group(1))  # type: ignore[union-attr]
        length = 0 if head_only else int(LENGTH.search(head).group(1))  # type: ignore[union-attr]
        out.append((status, data[end:end + length]))
        pos = end + length
    assert pos == len(data), "bytes after the last response"
    return out


def new_session(redis: zredis.PrivateRedis) -> HttpSession:
    app = HttpApp(Settings(proto="http", redis=redis.addr))
    return app.new_session(time.monotonic())


def drain(session: HttpSession) -> bytes:
    out = bytearray()
    for item in session.take_output():
        assert not isinstance(item, FileSlice)
        out += item
        session.sent(len(item), time.monotonic())
    return bytes(out)


@given(names=st.lists(st.sampled_from(sorted(REQUESTS)), min_size=1, max_size=8),
       data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
def test_any_interleaving_answers_in_order(redis: zredis.PrivateRedis, names: list[str],
                                          data: st.DataObject) -> None:
    stream = b"".join(REQUESTS[n][0] for n in names)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=6))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    session = new_session(redis)
    out = bytearray()
    with zredis.Client(redis.addr) as client:
        for piece in pieces:
            session.received(piece, time.monotonic())
            out += drain(session)
            # at random points, perform what is pending (zero, one or several calls)
            for _ in range(data.draw(st.integers(0, 2))):
                call = session.take_backend_call()
                if call is None:
                    break
                session.backend_replied(perform(client, call.commands, call.replies),
                                        time.monotonic())
                out += drain(session)
        for _ in range(2 * len(names) + 2):  # the rest, bounded
            call = session.take_backend_call()
            if call is None:
                break
            assert session.take_backend_call() is None  # one at a time
            session.backend_replied(perform(client, call.commands, call.replies),
                                    time.monotonic())
            out += drain(session)
    assert not session.awaiting_backend
    got = responses(bytes(out), [n == "book-head" for n in names])
    assert [status for status, _ in got] == [REQUESTS[n][1] for n in names]
    visits = [int(VISITS.search(body).group(1)) for (_, body), n in zip(got, names, strict=True)
              if n == "book"]
    assert visits == sorted(visits) and len(set(visits)) == len(visits)
    for (_, body), n in zip(got, names, strict=True):
        if n == "book":
            assert guestbook.PAGE_MARKER in body
        elif n == "page":
            assert body == wire.PAGE_BODY


def test_lost_backend_gives_503_and_the_next_request_is_served(
        redis: zredis.PrivateRedis) -> None:
    session = new_session(redis)
    session.received(REQUESTS["book"][0] + REQUESTS["page"][0], time.monotonic())
    assert drain(session) == b""  # the page waits behind the pending guestbook answer
    assert session.take_backend_call() is not None
    session.backend_failed(time.monotonic())
    got = responses(drain(session), [False, False])
    assert got[0] == (503, wire.GUESTBOOK["unavailable_body"].encode())
    assert got[1] == (200, wire.PAGE_BODY)


def test_connection_close_waits_for_the_pending_answer(redis: zredis.PrivateRedis) -> None:
    session = new_session(redis)
    session.received(b"GET /guestbook HTTP/1.1\r\nConnection: close\r\n\r\n",
                     time.monotonic())
    assert not session.closing and session.awaiting_backend and not session.wants_input
    call = session.take_backend_call()
    assert call is not None
    with zredis.Client(redis.addr) as client:
        session.backend_replied(perform(client, call.commands, call.replies),
                                time.monotonic())
    assert session.closing
    (status, body), = responses(drain(session), [False])
    assert status == 200 and guestbook.PAGE_MARKER in body


def test_eof_while_waiting_still_answers(redis: zredis.PrivateRedis) -> None:
    session = new_session(redis)
    session.received(REQUESTS["book"][0], time.monotonic())
    session.eof_received(time.monotonic())
    assert not session.closing  # the answer is not made yet
    session.take_backend_call()
    session.backend_failed(time.monotonic())
    assert session.closing
    assert responses(drain(session), [False])[0][0] == 503


def test_without_redis_guestbook_is_just_a_path() -> None:
    session = HttpApp(Settings(proto="http")).new_session(time.monotonic())
    session.received(REQUESTS["book"][0], time.monotonic())
    assert session.take_backend_call() is None
    assert responses(drain(session), [False])[0][0] == 404


def test_oversized_post_is_413_and_nothing_is_called(redis: zredis.PrivateRedis) -> None:
    app = HttpApp(Settings(proto="http", redis=redis.addr, max_body_bytes=100))
    session = app.new_session(time.monotonic())
    body = b"name=a&message=" + b"x" * 200
    session.received(b"POST /guestbook HTTP/1.1\r\n" + FORM.encode() +
                     b"Content-Length: %d\r\n\r\n" % len(body) + body, time.monotonic())
    assert session.take_backend_call() is None
    assert responses(drain(session), [False])[0][0] == 413
    assert session.closing


def test_idle_clock_pauses_while_a_call_is_pending(redis: zredis.PrivateRedis) -> None:
    app = HttpApp(Settings(proto="http", redis=redis.addr, idle_timeout=1.0))
    start = time.monotonic()
    session = app.new_session(start)
    session.received(REQUESTS["book"][0], start)
    assert session.deadline() == float("inf") and not session.expired(start + 3600)
    session.take_backend_call()
    session.backend_failed(start + 10)
    assert session.deadline() == start + 10 + 1.0  # counted again from the answer
