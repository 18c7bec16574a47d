"""The guestbook in C (c-epoll) against the Python core, and its Redis pool.

c-epoll re-implements the app in C: the form checks, the JSON entries, the page and a
small RESP parser. Here the core is the reference, driven in-process on the same
Redis: entries written by either are read back identically by the other (odd Unicode,
quotes, backslashes, whatever is stored), every refused form gets the core's exact
400 (random bodies and stored bytes too, by hypothesis), and a Redis that answers
garbage gives 503, then the next call gets a new connection. Then the pool: its size
cap, pipelining in order, a client that resets mid-call, SIGTERM with calls in
flight, a unix accept backlog that is full; and the reply parser: a reply split byte
by byte, and mutated replies answered as hiredis plus the core answer them.
Real sockets, a private Redis, every wait bounded.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import redis as zredis
from servers.core import guestbook, resp
from servers.core.http import HttpApp
from servers.registry import BY_NAME
from servers.settings import Settings
from tests.private_redis import private_redis
from tests.servers import running_server
from tests.test_guestbook_loops import (
    GET,
    clients,
    no_traceback,
    open_clients,
    reset,
    visits,
    wait_for,
)
from tests.test_guestbook_servers import exchange, normalised, read_responses, split, status

CEPOLL = BY_NAME["c-epoll"]
FORM = "application/x-www-form-urlencoded"
ODD = [
    ("zoë", "héllo wörld"),
    ("日本語", "こんにちは、世界"),
    ("emoji 😀", "astral 𝄞 and 🐍"),
    ("quote \"double\" 'single'", "back\\slash \\n not a newline"),
    ("<b>&amp;</b>", "<script>alert('x')</script> & \"more\""),
    ("combining e\u0301", "zero\u200bwidth, bidi \u202e, line\u2028sep"),
    ("tab\there", "lines\r\nand\ttabs\nand \u007e tilde"),
    ("nbsp\u00a0inside", "ends with ideographic space\u3000x"),
]


@pytest.fixture
def redis() -> Iterator[zredis.PrivateRedis]:
    """A Redis of the test's own, whose client counts are the server's connections."""
    with private_redis() as instance:
        yield instance


@pytest.fixture(scope="module")
def cepoll(shared_redis: zredis.PrivateRedis) -> Iterator[int]:
    """A c-epoll serving the guestbook on the module's Redis: its port."""
    with running_server(CEPOLL, "http", "--redis", str(shared_redis.addr)) as srv:
        yield srv.port
        no_traceback(srv)


def post(body: bytes, content_type: str | None = FORM) -> bytes:
    head = b"POST /guestbook HTTP/1.1\r\nHost: t\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def form(**fields: str) -> bytes:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items()).encode()


def core_answer(addr: zredis.RedisAddr, request: bytes) -> bytes:
    """What the in-process core answers to ``request``, its calls made on ``addr``."""
    session = HttpApp(Settings(proto="http", redis=addr)).new_session(time.monotonic())
    session.received(request, time.monotonic())
    out = b""
    for _ in range(8):
        out += b"".join(w for w in session.take_output() if isinstance(w, bytes))
        call = session.take_backend_call()
        if call is None:
            break
        with addr.connect() as s:
            s.sendall(call.commands)
            reader = resp.ReplyReader()
            while reader.available < call.replies:
                chunk = s.recv(65536)
                assert chunk
                reader.feed(chunk)
        session.backend_replied(reader.take(call.replies), time.monotonic())
    return out


def stored(addr: zredis.RedisAddr) -> bytes:
    """The newest entry, as Redis holds it."""
    with zredis.Client(addr) as c:
        (raw,) = c.call("LRANGE", guestbook.ENTRIES_KEY, -1, -1)  # type: ignore[misc]
    return raw


def push_raw(addr: zredis.RedisAddr, raw: bytes) -> None:
    with zredis.Client(addr) as c:
        c.call("RPUSH", guestbook.ENTRIES_KEY, raw)


LENGTH = re.compile(rb"\r\nContent-Length: \d+\r\n")


def same(response: bytes) -> bytes:
    """A response with its Date, visit count and length (the count's digits) blanked;
    read_responses framed it by its length, and a page ends with its tail."""
    return LENGTH.sub(b"\r\nContent-Length: N\r\n", normalised(response))


def page_of(port: int) -> bytes:
    (page,) = exchange(port, GET)
    assert status(page) == 200
    return page


# -- the same entries both ways ---------------------------------------------------------


@pytest.mark.parametrize("name,message", ODD)
def test_entries_written_by_c_are_the_cores_json(name: str, message: str, cepoll: int,
                                                 shared_redis: zredis.PrivateRedis) -> None:
    (answer,) = exchange(cepoll, post(form(name=name, message=message)))
    assert status(answer) == 303
    want = json.dumps({"name": name.strip(), "message": message.strip()}, ensure_ascii=False)
    assert stored(shared_redis.addr) == want.encode()
    assert same(page_of(cepoll)) == same(core_answer(shared_redis.addr, GET))


@pytest.mark.parametrize("name,message", ODD)
def test_entries_written_by_the_core_read_by_c(name: str, message: str, cepoll: int,
                                               shared_redis: zredis.PrivateRedis) -> None:
    answer = core_answer(shared_redis.addr, post(form(name=name, message=message)))
    assert status(answer) == 303
    page = page_of(cepoll)
    assert same(page) == same(core_answer(shared_redis.addr, GET))
    assert guestbook.html.escape(message.strip()).encode() in page


@pytest.mark.parametrize("raw", [
    b"not json at all <&>",
    b"\xff\xfe broken utf-8 \xe2\x82",
    b"\xed\xa0\x80 a surrogate, \xc0\xaf overlong, \xf4\x90\x80\x80 past U+10FFFF",
    b'["a", "list"]',
    b'"just a string"',
    b"42",
    b"{}",
    b'{"name": "only a name"}',
    b'{"name": 7, "message": null}',
    b'{"name": true, "message": false}',
    b'{"name": -0, "message": "x"}',
    b'{"name": "first", "name": "last", "message": "dup keys"}',
    b'{"message": "escapes \\u00e9 \\ud83d\\ude00 \\/ \\b\\f\\n\\r\\t \\" \\\\", "name": "u"}',
    b'  {"name" : "spaced" , "message" : "out"}  ',
    b'{"name": "x", "message": "y"} trailing',
    b'{"name": "raw \x01 control", "message": "refused by json.loads"}',
    b'{"name": "\'quotes\'", "message": "b\'repr\'"}',
    b"[\"it's\"]",
    b'{"name": "nested", "message": "deep", "x": [[[{"y": [1, 2.5e3, NaN]}]]]}',
])
def test_any_stored_entry_is_shown_as_the_core_shows_it(raw: bytes, cepoll: int,
                                                       shared_redis: zredis.PrivateRedis) -> None:
    push_raw(shared_redis.addr, raw)
    assert same(page_of(cepoll)) == same(core_answer(shared_redis.addr, GET))


JSON_VALUES = st.one_of(st.text(max_size=12), st.integers(-10**20, 10**20), st.booleans(),
                        st.none())
STORED = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode()),
    st.builds(lambda d, ascii_: json.dumps(d, ensure_ascii=ascii_).encode(),
              st.dictionaries(st.sampled_from(["name", "message", "other"]), JSON_VALUES),
              st.booleans()),
    st.builds(lambda v: json.dumps(v).encode(), st.lists(JSON_VALUES, max_size=3)),
)


@given(raw=STORED)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_stored_bytes_shown_as_the_core_shows_them(raw: bytes, cepoll: int,
                                                       shared_redis: zredis.PrivateRedis) -> None:
    push_raw(shared_redis.addr, raw)
    assert same(page_of(cepoll)) == same(core_answer(shared_redis.addr, GET))


# -- the form: the core's exact 400s ----------------------------------------------------


BAD_FORMS = [
    (form(name="a", message="b"), None),
    (form(name="a", message="b"), "text/plain"),
    (form(name="a", message="b"), "application/x-www-form-urlencodedx"),
    (b"name=\xff&message=x", FORM),
    (b"name=%ff&message=x", FORM),
    (b"name=%C3&message=%A9", FORM),
    (b"name=a&&message=b", FORM),
    (b"name=a&message=b&", FORM),
    (b"name", FORM),
    (b"&".join([b"a=1"] * 9), FORM),
    (b"name=a&message=b&x=%27", FORM),
    (b"name=a&it%27s=1", FORM),
    (b"name=a&both%27%22=1", FORM),
    (b"name=a&" + ("k" * 40).encode() + b"=1", FORM),
    ("name=a&çlé\u00a0\u00ad\u200b\u2028\ue000=1".encode(), FORM),
    (b"name=a&tab%09nl%0Acr%0Dnul%00del%7F%5C=1", FORM),
    (b"name=a&name=b&message=c", FORM),
    (b"message=a&message=b", FORM),
    (b"", FORM),
    (b"name=&message=x", FORM),
    (b"name=+++&message=x", FORM),
    (b"name=%E3%80%80%C2%A0&message=x", FORM),
    (b"name=a", FORM),
    (b"name=a&message=%20%09", FORM),
    (form(name="n" * 65, message="m"), FORM),
    (form(name="é" * 65, message="m"), FORM),
    (form(name="a", message="m" * 1001), FORM),
    (b"name=a%01b&message=m", FORM),
    (b"name=a&message=m%7Fm", FORM),
    (b"name=a%0Ab&message=m", FORM),
    (b"name=a%0Db&message=m", FORM),
    (b"name=a&message=%1Bm", FORM),
]


@pytest.mark.parametrize("body,content_type", BAD_FORMS)
def test_refused_forms_get_the_cores_400(body: bytes, content_type: str | None, cepoll: int,
                                         shared_redis: zredis.PrivateRedis) -> None:
    request = post(body, content_type)
    want = core_answer(shared_redis.addr, request)
    assert status(want) == 400, want
    (got,) = exchange(cepoll, request)
    assert normalised(got) == normalised(want)


@pytest.mark.parametrize("body,content_type", [
    (form(name="é" * 64, message="m" * 1000), FORM),
    (b"name=+a+b+&message=%2B%25zz%", "Application/X-WWW-Form-URLEncoded ; charset=utf-8"),
    (b"message=tab%09ok&name=%20padded%E3%80%80", FORM),
])
def test_accepted_forms_store_what_the_core_stores(body: bytes, content_type: str,
                                                   cepoll: int,
                                                   shared_redis: zredis.PrivateRedis) -> None:
    request = post(body, content_type)
    want = core_answer(shared_redis.addr, request)
    by_core = stored(shared_redis.addr)
    (got,) = exchange(cepoll, request)
    assert normalised(got) == normalised(want) and status(got) == 303
    assert stored(shared_redis.addr) == by_core


FORM_PIECES = ["name", "message", "=", "=", "&", "&", "+", "%", "%2", "%20", "%0A", "%0d",
               "%09", "%ff", "%C3", "%A9", "%C3%A9", "%E3%80%80", "%F0%9F%98%80", "é", "\u3000",
               "\u00a0", "'", '"', "\\", "a", "xyz", "%01", "%7F", "%E2%80%A8", "%27", "%22",
               "%5C", " ", "\x85"]


@given(pieces=st.lists(st.sampled_from(FORM_PIECES), max_size=14))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_form_is_judged_as_the_core_judges_it(pieces: list[str], cepoll: int,
                                                  shared_redis: zredis.PrivateRedis) -> None:
    """Bodies made of the form's tricky pieces: the same 400 (or 303 and the same entry)."""
    request = post("".join(pieces).encode())
    want = core_answer(shared_redis.addr, request)
    by_core = stored(shared_redis.addr) if status(want) == 303 else None
    (got,) = exchange(cepoll, request)
    assert normalised(got) == normalised(want)
    if by_core is not None:
        assert stored(shared_redis.addr) == by_core


def test_chunked_post_is_read(cepoll: int, shared_redis: zredis.PrivateRedis) -> None:
    body = form(name="chunky", message="in two chunks")
    request = (b"POST /guestbook HTTP/1.1\r\nHost: t\r\nContent-Type: " + FORM.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:]))
    (got,) = exchange(cepoll, request)
    assert status(got) == 303
    assert json.loads(stored(shared_redis.addr)) == {"name": "chunky",
                                                      "message": "in two chunks"}


# -- a Redis that answers garbage ---------------------------------------------------------


TRUNCATED = b":5\r\n"  # sent, then the connection closes mid-call


class FakeRedis:
    """A listener that answers each page call, on whatever connection, with the next
    canned reply (after TRUNCATED it closes that connection)."""

    def __init__(self, replies: list[bytes], piece: int = 0) -> None:
        self.replies = list(replies)
        self.piece = piece  # send each reply in pieces of this many bytes (0: at once)
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            while True:
                while not data.endswith(b"$2\r\n-1\r\n"):  # a page call ends with LRANGE's -1
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = b""
                reply = self.replies.pop(0) if self.replies else b""
                if self.piece:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for at in range(0, len(reply), self.piece):
                        conn.sendall(reply[at:at + self.piece])
                        time.sleep(0.0005)
                else:
                    conn.sendall(reply)
                if reply == TRUNCATED:
                    return

    def close(self) -> None:
        self.sock.close()


GOOD = b":5\r\n*1\r\n$2\r\n{}\r\n"


@pytest.mark.parametrize("garbage,connections", [
    (b"!not resp\r\n", 2),
    (b":5\r\n*1\r\n$99999999999\r\n", 2),
    (b":5\r\n*99999\r\n", 2),
    (b":5\r\n*1\r\n$2\r\n{}XX", 2),
    (b":five\r\n*0\r\n", 2),
    (b":5\r\n*0\r\n:6\r\n", 2),  # a reply nobody asked for
    (TRUNCATED, 2),
    # well-formed refusals: 503, and the connection is still good
    (b"-ERR refused\r\n*0\r\n", 1),
    (b":5\r\n*-1\r\n", 1),
    (b"+OK\r\n*0\r\n", 1),
], ids=lambda g: repr(g)[:24])
def test_garbled_reply_is_503_then_a_new_connection(garbage: bytes, connections: int) -> None:
    fake = FakeRedis([garbage, GOOD])
    try:
        with running_server(CEPOLL, "http", "--redis", f"127.0.0.1:{fake.port}") as srv:
            with srv.connect() as s:
                s.sendall(GET)
                (lost,) = read_responses(s, 1)
                assert status(lost) == 503
                assert lost.endswith(guestbook.unavailable().body)
                s.sendall(GET)
                (page,) = read_responses(s, 1)
            assert status(page) == 200 and b"Visits: 5</p>" in page
            assert b"<li><b></b>: </li>" in page
            assert fake.accepted == connections
            no_traceback(srv)
    finally:
        fake.close()


# -- the pool --------------------------------------------------------------------------


def test_pool_growth_is_bounded(redis: zredis.PrivateRedis) -> None:
    """--backend-pool 2, 6 clients with a 300 ms wait: never more than 2 Redis
    connections, all answered, at least 3 waits in a row."""
    n, pool, wait = 6, 2, 0.3
    with running_server(CEPOLL, "http", "--redis", str(redis.addr), "--backend-wait-ms",
                        str(wait * 1000), "--backend-pool", str(pool)) as srv:
        socks = open_clients(srv.port, n)
        sel = selectors.DefaultSelector()
        try:
            before = visits(redis.addr)
            start = time.monotonic()
            for s in socks:
                s.sendall(GET)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, bytearray())
            most, done, deadline = (0, 0), 0, start + 30
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
        assert most[0] <= pool and most[1] <= pool and most[1] >= 1, most
        assert took >= (n // pool) * wait * 0.9, f"{n} calls over {pool} took {took:.2f} s"
        assert visits(redis.addr) == before + n
        assert clients(redis.addr)[0] == pool  # kept idle in the pool
        no_traceback(srv)


def test_pipelined_get_post_get_in_order(redis: zredis.PrivateRedis) -> None:
    """One connection, three guestbook requests and the page in one write: answered in
    order, the second page counts one more visit and shows the entry."""
    with running_server(CEPOLL, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "20") as srv:
        with srv.connect() as s:
            s.sendall(GET + post(form(name="pipe", message="in order")) +
                      b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" +
                      GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            data = b""
            s.settimeout(10)
            while chunk := s.recv(65536):
                data += chunk
        got = split(data, [False] * 4)
        assert [status(r) for r in got] == [200, 303, 200, 200]
        first, second = (int(re.search(rb"Visits: (\d+)", r).group(1))  # type: ignore[union-attr]
                         for r in (got[0], got[3]))
        assert second == first + 1
        assert b"<li><b>pipe</b>: in order</li>" in got[3]
        assert b"<li><b>pipe</b>" not in got[0]
        assert b"Connection: close\r\n" in got[3]
        no_traceback(srv)


def test_client_that_resets_while_its_call_is_pending(redis: zredis.PrivateRedis) -> None:
    """Pool of 1: A's call in flight, B's queued behind it; both reset. The reply to A
    is dropped, the connection reused, C answered twice."""
    with running_server(CEPOLL, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "600", "--backend-pool", "1") as srv:
        a, b, c = open_clients(srv.port, 3)
        try:
            a.sendall(GET)
            wait_for(redis.addr, connected=1, blocked=1)
            b.sendall(GET)
            time.sleep(0.05)  # B's request read and queued (the result is the same if not)
            reset(a)
            reset(b)
            c.sendall(GET)
            assert status(read_responses(c, 1, timeout=20)[0]) == 200
            c.sendall(GET)
            assert status(read_responses(c, 1)[0]) == 200
        finally:
            c.close()
        assert clients(redis.addr)[0] == 1
        assert srv.proc.poll() is None
        no_traceback(srv)


def test_sigterm_lets_calls_in_flight_finish(redis: zredis.PrivateRedis) -> None:
    n = 4
    with running_server(CEPOLL, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "500") as srv:
        socks = open_clients(srv.port, n)
        try:
            for s in socks:
                s.sendall(GET)
            wait_for(redis.addr, connected=n, blocked=n)
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            for s in socks:
                assert status(read_responses(s, 1)[0]) == 200
        finally:
            for s in socks:
                s.close()
        wait_for(redis.addr, connected=0, timeout=5)


def test_sigterm_with_calls_longer_than_the_grace(redis: zredis.PrivateRedis) -> None:
    with running_server(CEPOLL, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "10000") as srv:
        socks = open_clients(srv.port, 2)
        try:
            for s in socks:
                s.sendall(GET)
            wait_for(redis.addr, connected=2, blocked=2)
            start = time.monotonic()
            assert srv.stop(signal.SIGTERM, timeout=2.0) == 0
            assert time.monotonic() - start < 2.0
            for s in socks:
                s.settimeout(5)
                assert s.recv(65536) == b""
        finally:
            for s in socks:
                s.close()
        wait_for(redis.addr, connected=0, timeout=5)


def test_unix_connect_retried_while_the_backlog_is_full() -> None:
    """A unix listener nobody accepts from, its backlog full: the connect is tried again
    every few ms and fails (503) at the 2 s connect timeout, not at once; once the
    listener accepts, the next call goes through."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(0)
        fillers = []
        for _ in range(8):  # fill the backlog: these connects do not wait
            f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(path)
            except BlockingIOError:
                f.close()
                break
            fillers.append(f)
        try:
            with running_server(CEPOLL, "http", "--redis", f"unix:{path}") as srv:
                start = time.monotonic()
                (lost,) = exchange(srv.port, GET)
                took = time.monotonic() - start
                assert status(lost) == 503
                assert 1.8 <= took < 4.0, f"{took:.2f} s"
                no_traceback(srv)
        finally:
            for f in fillers:
                f.close()
            lsock.close()


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


PAGE_REPLY = (b":12\r\n*3\r\n" + bulk(b'{"name": "a", "message": "first"}') + b"$-1\r\n" +
              bulk(b'{"name": "b", "message": "se\\u00e7"}'))


def test_a_reply_in_one_byte_pieces() -> None:
    """The parser takes a reply however it is split: one byte per segment."""
    fake = FakeRedis([PAGE_REPLY], piece=1)
    try:
        with running_server(CEPOLL, "http", "--redis", f"127.0.0.1:{fake.port}") as srv:
            (page,) = exchange(srv.port, GET)
            assert status(page) == 200 and b"Visits: 12</p>" in page
            body = page.split(b"\r\n\r\n", 1)[1]
            assert body.index("<b>b</b>: seç".encode()) < body.index(b"<b>?</b>: None") \
                < body.index(b"<b>a</b>: first")
            no_traceback(srv)
    finally:
        fake.close()


def encode_reply(value: object) -> bytes:
    """A decoded reply written back in RESP's one canonical form."""
    if isinstance(value, hiredis.ReplyError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, int):
        return b":%d\r\n" % value
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(v) for v in value)
    assert isinstance(value, bytes)
    return bulk(value)


def core_verdict(reply: bytes) -> tuple[int, bytes] | None:
    """What the core answers to ``reply`` as the page call's replies, decoded by hiredis:
    (status, body); (0, b"") where hiredis is laxer than RESP (it took bytes that are
    not the canonical form of what it decoded: a bulk string without its CRLF, say,
    which c-epoll may refuse); None if hiredis still waits for more (a cut reply)."""
    reader = hiredis.Reader()
    reader.feed(reply)
    replies: list[object] = []
    try:
        while (got := reader.gets()) is not False:
            replies.append(got)
    except hiredis.ProtocolError:
        return 503, guestbook.unavailable().body
    if len(replies) < 2:
        return None
    if len(replies) > 2 or reader.has_data():
        return 503, guestbook.unavailable().body  # bytes nobody asked for
    if b"".join(encode_reply(r) for r in replies) != reply:
        return 0, b""
    answer = guestbook.Guestbook(0).render_page(replies)
    return answer.status, answer.body


def test_mutated_replies_answered_as_the_core_answers_them() -> None:
    """Page-call replies with bytes changed, cut or repeated, each decoded by hiredis
    and rendered by the core: c-epoll gives the same status and body (503 for
    garbage); then a good reply is served: the parser is bounded and recovers."""
    rng = random.Random(18)
    cases: list[tuple[bytes, tuple[int, bytes]]] = []
    while len(cases) < 200:
        data = bytearray(PAGE_REPLY)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            kind = rng.randrange(3)
            if kind == 0:
                data[at] = rng.choice(b"\r\n:$*-+0123456789x\xff")
            elif kind == 1:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = data[at:at + rng.randint(1, 8)]
        verdict = core_verdict(bytes(data))
        if verdict is not None:  # a cut reply would only wait for the reply timeout
            cases.append((bytes(data), verdict))
    fake = FakeRedis([c[0] for c in cases] + [GOOD])
    try:
        with running_server(CEPOLL, "http", "--redis", f"127.0.0.1:{fake.port}") as srv:
            for reply, (want_status, want_body) in cases:
                (answer,) = exchange(srv.port, GET)
                body = answer.split(b"\r\n\r\n", 1)[1]
                if want_status:
                    assert (status(answer), body) == (want_status, want_body), reply
                else:
                    assert status(answer) in (200, 503), reply
            (page,) = exchange(srv.port, GET)
            assert status(page) == 200 and b"Visits: 5</p>" in page
            no_traceback(srv)
    finally:
        fake.close()


def test_many_clients_wait_at_once(redis: zredis.PrivateRedis) -> None:
    """200 clients, a 200 ms wait each, one loop: all answered in about one wait (the
    pool grows to the calls in flight), not 200 waits."""
    n = 200
    with running_server(CEPOLL, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "200") as srv:
        socks = open_clients(srv.port, n)
        try:
            start = time.monotonic()
            for s in socks:
                s.sendall(GET)
            for s in socks:
                assert status(read_responses(s, 1, timeout=20)[0]) == 200
            took = time.monotonic() - start
        finally:
            for s in socks:
                s.close()
        assert took < 10, f"{took:.1f} s"
        assert 1 < clients(redis.addr)[0] <= n
        no_traceback(srv)
