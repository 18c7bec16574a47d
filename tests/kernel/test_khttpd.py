"""khttpd: the bytes of WIRE.md, keep-alive, pipelining, errors, unloading."""

from __future__ import annotations

import re
import selectors
import threading
import time
from email.utils import parsedate_to_datetime

import pytest

from servers.core import wire
from tests.differential import core_reply
from tests.kernel import helpers

DATE_RE = re.compile(rb"\r\nDate: ([^\r\n]*)\r\n")
DATE_LEN = len("Mon, 23 Nov 2026 12:00:00 GMT")


@pytest.fixture
def khttpd(port: int) -> int:
    helpers.load("khttpd", port=port)
    helpers.connect(port).close()
    return port


def blank_dates(data: bytes) -> bytes:
    return DATE_RE.sub(b"\r\nDate: -\r\n", data)


def check_dates(data: bytes) -> None:
    """Every Date is an IMF-fixdate within a minute of now."""
    dates = DATE_RE.findall(data)
    assert dates
    for raw in dates:
        text = raw.decode()
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", text)
        assert abs(parsedate_to_datetime(text).timestamp() - time.time()) < 60
        assert wire.http_date(parsedate_to_datetime(text).timestamp()) == text


def page(connection: int = wire.KEEP, head_only: bool = False) -> bytes:
    head = wire.compose_head(200, "-", wire.PAGE_CONTENT_TYPE, len(wire.PAGE_BODY), connection)
    return head if head_only else head + wire.PAGE_BODY


def real_len(blanked: bytes) -> int:
    """The length of ``blanked`` with each ``Date: -`` holding a real 29-byte date."""
    return len(blanked) + (DATE_LEN - 1) * blanked.count(b"\r\nDate: -\r\n")


def test_get_root_matches_wire_and_core(khttpd: int) -> None:
    req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    expected = page()
    with helpers.connect(khttpd) as s:
        s.sendall(req)
        raw = helpers.read_exactly(s, real_len(expected))
    check_dates(raw)
    assert blank_dates(raw) == expected
    assert core_reply(req, eof=False) == (expected, False)
    length = int(re.search(rb"Content-Length: (\d+)", raw).group(1))
    assert length == len(raw.split(b"\r\n\r\n", 1)[1]) == len(wire.PAGE_BODY)


def test_keep_alive_many_requests(khttpd: int) -> None:
    expected = page()
    with helpers.connect(khttpd) as s:
        for _ in range(300):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert blank_dates(helpers.read_exactly(s, real_len(expected))) == expected


def test_pipelined_in_order(khttpd: int) -> None:
    reqs = [b"GET / HTTP/1.1\r\n\r\n", b"HEAD / HTTP/1.1\r\n\r\n", b"GET /nope HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"GET /?q=1 HTTP/1.1\r\n\r\n"]
    batch = b"".join(reqs) * 40 + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    expected, closes = core_reply(batch, eof=False)
    assert closes
    with helpers.connect(khttpd) as s:
        s.sendall(batch)
        raw = helpers.read_until_eof(s)
    check_dates(raw)
    assert blank_dates(raw) == expected


CASES = [
    pytest.param(b"HEAD / HTTP/1.1\r\n\r\n", False, id="head"),
    pytest.param(b"GET /missing HTTP/1.1\r\n\r\n", False, id="404"),
    pytest.param(b"HEAD /missing HTTP/1.1\r\n\r\n", False, id="404-head"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", False, id="405"),
    pytest.param(b"DELETE /x HTTP/1.1\r\n\r\n", False, id="405-delete"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", True, id="http10-close"),
    pytest.param(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False, id="http10-keep"),
    pytest.param(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", True, id="conn-close"),
    pytest.param(b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n", True,
                 id="conn-list"),
    pytest.param(b"BREW / HTTP/1.1\r\n\r\n", True, id="400-method"),
    pytest.param(b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", True, id="400-header"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", True, id="400-version"),
    pytest.param(b"GET  /  HTTP/1.1\r\n\r\n", False, id="runs-of-spaces"),
    pytest.param(b"GET / HTTP/1.1 \r\n\r\n", True, id="400-trailing-space"),
    pytest.param(b"GET / HTTP/1.1\n\n", True, id="400-bare-lf"),
    pytest.param(b"get / HTTP/1.1\r\n\r\n", True, id="400-lowercase-method"),
    pytest.param(b"GET / HTTP/1.1\r\nA : b\r\n\r\n", True, id="400-space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", True, id="400-obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n", True, id="400-ctl-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", True,
                 id="400-two-lengths"),
    pytest.param(b"GET http://host HTTP/1.1\r\n\r\n", False, id="absolute-form"),
    pytest.param(b"GET http://host/x?y HTTP/1.1\r\n\r\n", False, id="absolute-form-404"),
    pytest.param(b"GET * HTTP/1.1\r\n\r\n", False, id="asterisk-404"),
    pytest.param(b"QUERY / HTTP/1.1\r\n\r\n", False, id="405-query"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                 False, id="405-chunked-body"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", False,
                 id="405-gzip-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", True, id="400-te-gzip"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True,
                 id="400-bad-chunk"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                 True, id="400-te-and-length"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", True, id="413"),
    pytest.param(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", True, id="400-length"),
    pytest.param(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", True, id="431"),
]


@pytest.mark.parametrize(("request_bytes", "closes"), CASES)
def test_responses_match_core(khttpd: int, request_bytes: bytes, closes: bool) -> None:
    expected, core_closes = core_reply(request_bytes, eof=False)
    assert core_closes == closes
    with helpers.connect(khttpd) as s:
        s.sendall(request_bytes)
        if closes:
            raw = helpers.read_until_eof(s)
        else:
            raw = helpers.read_exactly(s, real_len(expected))
            # Still open: a second request is answered on the same connection.
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert blank_dates(helpers.read_exactly(s, real_len(page()))) == page()
    check_dates(raw)
    assert blank_dates(raw) == expected


def test_chunked_body_with_trailer_then_pipelined(khttpd: int) -> None:
    body = b"3;ext=1\r\nabc\r\n10\r\n" + b"z" * 16 + b"\r\n0\r\nTrailer: v\r\n\r\n"
    batch = b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    batch += b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    not_found, _ = core_reply(b"GET /x HTTP/1.1\r\n\r\n", eof=False)
    with helpers.connect(khttpd) as s:
        s.sendall(batch)
        raw = helpers.read_until_eof(s)
    assert blank_dates(raw) == not_found + page(wire.CLOSE)


def test_400_then_close(khttpd: int) -> None:
    with helpers.connect(khttpd) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        raw = helpers.read_until_eof(s)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in raw


def test_request_split_byte_by_byte(khttpd: int) -> None:
    req = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"
    with helpers.connect(khttpd) as s:
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
        assert blank_dates(helpers.read_exactly(s, real_len(page()))) == page()


def test_unload_with_100_idle_clients(khttpd: int) -> None:
    socks = [helpers.connect(khttpd) for _ in range(100)]
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            helpers.read_exactly(s, real_len(page()))
        took = helpers.unload("khttpd")
        assert took < 2.0, f"rmmod with 100 idle connections took {took:.2f}s"
        assert all(helpers.closed_by_peer(s, 5.0) for s in socks)
    finally:
        for s in socks:
            s.close()


def test_unload_under_load(khttpd: int) -> None:
    stop = threading.Event()
    done: list[int] = []

    def client() -> None:
        try:
            with helpers.connect(khttpd) as s:
                while not stop.is_set():
                    s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 4)
                    helpers.read_exactly(s, 4 * real_len(page()))
                    done.append(1)
        except (OSError, AssertionError):
            return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(done) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done
    took = helpers.unload("khttpd")
    stop.set()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert took < 5.0


def test_pipelining_client_that_never_reads(khttpd: int) -> None:
    before = helpers.meminfo_kib("MemAvailable")
    hog = helpers.small_buffers()
    hog.connect(("127.0.0.1", khttpd))
    try:
        hog.setblocking(False)
        burst = b"GET / HTTP/1.1\r\n\r\n" * 1000
        sent = 0
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as sel:
            sel.register(hog, selectors.EVENT_WRITE)
            while sent < 256 << 20 and time.monotonic() < deadline:
                try:
                    # Whole requests only: the rest of a partly sent burst goes first.
                    offset = sent % len(burst)
                    sent += hog.send(burst[offset:])
                    continue
                except BlockingIOError:
                    pass
                if not sel.select(1.5):
                    break  # the server stopped reading: its responses are not read
        # Each 18-byte request makes a ~280-byte response; the server stops taking
        # requests once the socket buffers are full of unread responses.
        assert sent < 32 << 20, f"server took {sent} bytes of requests"
        assert before - helpers.meminfo_kib("MemAvailable") < 96 * 1024
        with helpers.connect(khttpd) as other:
            other.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert blank_dates(helpers.read_exactly(other, real_len(page()))) == page()
        # The worker is blocked in sendmsg on the stuffed connection: unloading
        # must still wake it and finish promptly.
        took = helpers.unload("khttpd")
        assert took < 2.0, f"rmmod with a stuffed connection took {took:.2f}s"
    finally:
        hog.close()


def test_idle_connection_closed_after_idle_timeout(port: int) -> None:
    helpers.load("khttpd", port=port, idle_timeout=1)
    with helpers.connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        helpers.read_exactly(s, real_len(page()))
        start = time.monotonic()
        assert helpers.closed_by_peer(s, 10.0)
        assert 0.5 < time.monotonic() - start < 10.0


def test_slow_request_head_closed_after_header_timeout(port: int) -> None:
    helpers.load("khttpd", port=port, header_timeout=1, idle_timeout=30)
    head = b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200
    with helpers.connect(port) as s:
        start = time.monotonic()
        closed = False
        for byte in head:  # a byte every 0.2 s: never idle, never complete
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if helpers.closed_by_peer(s, 0.2):
                closed = True
                break
        took = time.monotonic() - start
    assert closed, "a request head dribbled for 40 s was not cut off"
    assert 0.5 < took < 8.0


def test_100_concurrent_keep_alive_clients(khttpd: int) -> None:
    socks = [helpers.connect(khttpd) for _ in range(100)]
    try:
        for _round in range(3):
            for s in socks:  # every client has a request in flight at once
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            for s in socks:
                assert blank_dates(helpers.read_exactly(s, real_len(page()))) == page()
    finally:
        for s in socks:
            s.close()
