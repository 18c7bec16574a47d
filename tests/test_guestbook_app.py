"""The guestbook app's sans-IO logic against a real, private Redis.

Each call the app emits is written to a real ``redis-server`` as raw RESP and its
replies decoded with the core's reader, exactly as a driver will; no server model
is involved yet. Also: RESP encoding, the form's validation, and escaping.
"""

from __future__ import annotations

import os
import socket
import time

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import redis as zredis
from servers.core import guestbook, resp
from servers.core.guestbook import AppResponse, BackendCall, Guestbook
from tests.private_redis import private_redis

FORM = b"application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def redis(shared_redis: zredis.PrivateRedis) -> zredis.PrivateRedis:
    return shared_redis


@pytest.fixture
def clean(redis: zredis.PrivateRedis) -> zredis.PrivateRedis:
    with zredis.Client(redis.addr) as c:
        assert c.call("FLUSHALL") == b"OK"
    return redis


def perform(addr: zredis.RedisAddr, call: BackendCall, timeout: float = 5.0) -> list[object]:
    """Write the call's bytes on a fresh connection, read exactly its replies."""
    reader = resp.ReplyReader()
    with addr.connect(timeout) as s:
        s.sendall(call.commands)
        deadline = time.monotonic() + timeout
        while reader.available < call.replies:
            assert time.monotonic() < deadline, "Redis did not answer in time"
            data = s.recv(65536)
            assert data, "Redis closed the connection"
            reader.feed(data)
    return reader.take(call.replies)


def post(app: Guestbook, addr: zredis.RedisAddr, body: bytes) -> AppResponse:
    call = app.post_call(FORM, body)
    if isinstance(call, AppResponse):
        return call
    return app.finish_post(perform(addr, call))


def page(app: Guestbook, addr: zredis.RedisAddr) -> AppResponse:
    return app.render_page(perform(addr, app.page_call()))


# -- RESP ---------------------------------------------------------------------------------


def test_encode_command_is_resp_array_of_bulk_strings() -> None:
    assert resp.encode_command("SET", b"k\r\n", 12) == (
        b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n")
    assert resp.encode_command("SET", "é") == b"*2\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n"
    with pytest.raises(ValueError):
        resp.encode_command()


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_reader_takes_replies_split_anywhere(args: list[bytes], data: st.DataObject) -> None:
    """Bulk replies echoing the arguments, fed in random pieces, come back whole."""
    wire = b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    reader = resp.ReplyReader()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    last = 0
    for cut in [*cuts, len(wire)]:
        reader.feed(wire[last:cut])
        last = cut
    assert reader.available == len(args)
    assert reader.take(len(args)) == args


def test_error_reply_is_a_value_not_an_exception() -> None:
    reader = resp.ReplyReader()
    reader.feed(b"-ERR wrong\r\n:7\r\n")
    first, second = reader.take(2)
    assert isinstance(first, resp.ReplyError) and second == 7
    with pytest.raises(hiredis.ProtocolError):
        reader.feed(b"?nonsense\r\n")


# -- against a real Redis -----------------------------------------------------------------


def test_visits_count_and_entries_newest_first(clean: zredis.PrivateRedis) -> None:
    app = Guestbook()
    first = page(app, clean.addr)
    assert first.status == 200 and b"Visits: 1</p>" in first.body
    assert guestbook.PAGE_MARKER in first.body
    for i in range(3):
        answer = post(app, clean.addr, b"name=n%d&message=hello+world+%d" % (i, i))
        assert (answer.status, answer.location) == (303, "/guestbook")
    body = page(app, clean.addr).body
    assert b"Visits: 2</p>" in body
    assert body.index(b"hello world 2") < body.index(b"hello world 1") < body.index(
        b"hello world 0")


def test_list_stays_bounded_and_page_shows_the_last_entries(
        clean: zredis.PrivateRedis) -> None:
    app = Guestbook()
    call = app.post_call(FORM, b"name=a&message=b")
    assert isinstance(call, BackendCall)
    for _ in range(guestbook.KEPT + 50):
        assert app.finish_post(perform(clean.addr, call)).status == 303
    with zredis.Client(clean.addr) as c:
        assert c.call("LLEN", guestbook.ENTRIES_KEY) == guestbook.KEPT
    assert page(app, clean.addr).body.count(b"<li>") == guestbook.SHOWN


def test_user_text_is_escaped(clean: zredis.PrivateRedis) -> None:
    app = Guestbook()
    nasty = "<script>alert('x')</script> & \"quotes\""
    from urllib.parse import urlencode
    answer = post(app, clean.addr, urlencode({"name": nasty, "message": nasty}).encode())
    assert answer.status == 303
    body = page(app, clean.addr).body
    assert b"<script>" not in body
    assert b"&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in body


@pytest.mark.parametrize(("content_type", "body", "why"), [
    (FORM, b"message=hi", b"name is missing"),
    (FORM, b"name=&message=hi", b"name is missing"),
    (FORM, b"name=a", b"message is missing"),
    (FORM, b"name=a&message=hi&name=b", b"name given twice"),
    (FORM, b"name=a&message=hi&admin=1", b"unknown field"),
    (FORM, b"name=" + b"x" * (guestbook.MAX_NAME + 1) + b"&message=hi", b"over 64"),
    (FORM, b"name=a&message=" + b"y" * (guestbook.MAX_MESSAGE + 1), b"over 1000"),
    (FORM, b"name=a%00b&message=hi", b"control characters"),
    (FORM, b"name=a%0Ab&message=hi", b"name is one line"),
    (FORM, b"name=a&message=\xff", b"not UTF-8"),
    (FORM, b"name=a&message=%ff", b"not valid urlencoded UTF-8"),
    (FORM, b"name=a&&message=hi", b"not valid urlencoded"),
    (b"text/plain", b"name=a&message=hi", b"application/x-www-form-urlencoded"),
    (None, b"name=a&message=hi", b"application/x-www-form-urlencoded"),
])
def test_bad_forms_get_400_and_change_nothing(clean: zredis.PrivateRedis,
                                              content_type: bytes | None, body: bytes,
                                              why: bytes) -> None:
    answer = Guestbook().post_call(content_type, body)
    assert isinstance(answer, AppResponse)
    assert answer.status == 400 and why in answer.body
    with zredis.Client(clean.addr) as c:
        assert c.call("EXISTS", guestbook.ENTRIES_KEY) == 0


def test_form_with_charset_and_unicode_is_accepted(clean: zredis.PrivateRedis) -> None:
    app = Guestbook()
    call = app.post_call(FORM + b"; charset=UTF-8",
                         b"name=Zo%C3%A9&message=caf%C3%A9+%E2%98%95")
    assert isinstance(call, BackendCall)
    assert app.finish_post(perform(clean.addr, call)).status == 303
    assert "Zoé</b>: café ☕".encode() in page(app, clean.addr).body


def test_redis_error_reply_gives_503() -> None:
    app = Guestbook()
    err = resp.ReplyError("WRONGTYPE Operation against a key holding the wrong kind")
    assert app.render_page([err, []]).status == 503
    assert app.finish_post([1, err]).status == 503


def test_backend_wait_is_real_and_calibrated(clean: zredis.PrivateRedis) -> None:
    app = Guestbook(wait_ms=10)
    assert app.page_call().replies == 3
    start = time.perf_counter()
    answer = page(app, clean.addr)
    took = (time.perf_counter() - start) * 1000
    assert answer.status == 200
    assert took >= 9.0, f"a 10 ms backend wait took {took:.1f} ms"
    measured = zredis.calibrate_wait(clean.addr, 10)
    assert 9.0 <= measured < 60.0, measured
    assert zredis.hz_warning(clean.addr, 10) is None


# -- the private instance -----------------------------------------------------------------


def test_private_redis_stops_restarts_and_leaves_nothing() -> None:
    with private_redis(hz=10) as r:
        assert zredis.info(r.tcp_addr)["hz"] == "10"
        warning = zredis.hz_warning(r.addr, 10)
        assert warning is not None and "hz 10" in warning
        with zredis.Client(r.addr) as c:
            assert c.call("SET", "k", "v") == b"OK"
        r.stop()
        with pytest.raises(OSError):
            r.addr.connect(1.0)
        r.start()  # same addresses, empty (no persistence)
        with zredis.Client(r.tcp_addr) as c:
            assert c.call("GET", "k") is None
        directory = os.path.dirname(r.addr.path)
    assert not os.path.exists(directory)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.tcp_addr.port), timeout=1.0).close()


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:6379", zredis.RedisAddr(host="127.0.0.1", port=6379)),
    ("[::1]:7000", zredis.RedisAddr(host="::1", port=7000)),
    ("unix:/run/redis.sock", zredis.RedisAddr(path="/run/redis.sock")),
])
def test_parse_addr(text: str, want: zredis.RedisAddr) -> None:
    assert zredis.parse_addr(text) == want
    assert str(want) == text


@pytest.mark.parametrize("text", ["", "6379", "localhost:", "localhost:0", "h:99999",
                                  "unix:relative.sock", "h:port"])
def test_parse_addr_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        zredis.parse_addr(text)
