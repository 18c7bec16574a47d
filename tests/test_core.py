"""The sans-IO core on its own: no sockets, so properties can be checked exhaustively."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from servers.core import FileSlice, session_factory, wire
from servers.core.files import FileRoot
from servers.settings import Settings
from tests.clients import without_date

HTTP = session_factory(Settings(proto="http"))
ECHO = session_factory(Settings(proto="echo"))

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\nabc=def",
    b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /?q=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
]
STATUS_RE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def run(data_pieces: list[bytes]) -> tuple[bytes, bool]:
    session = HTTP(0.0)
    out = []
    for piece in data_pieces:
        session.received(piece, 1.0)
        for item in session.take_output():
            assert isinstance(item, bytes)
            out.append(item)
    return without_date(b"".join(out)), session.closing


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0), max_size=20),
       st.booleans())
def test_any_split_of_a_pipeline_gives_the_same_responses(
        requests: list[bytes], cuts: list[int], end_with_close: bool) -> None:
    stream = b"".join(requests)
    if end_with_close:
        stream += b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + b"GET / HTTP/1.1\r\n\r\n"
    whole = run([stream])
    assert run(split(stream, cuts)) == whole
    assert run([bytes([b]) for b in stream]) == whole
    statuses = STATUS_RE.findall(whole[0])
    expected = len(requests) + (1 if end_with_close else 0)
    assert len(statuses) == expected  # the request after "Connection: close" is ignored
    assert whole[1] == end_with_close


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_give_responses_or_a_clean_400(data: bytes, cuts: list[int]) -> None:
    out, closing = run(split(data, cuts))
    statuses = [int(s) for s in STATUS_RE.findall(out)]
    # Only whole responses come out; an error that ends the connection is the last one.
    for status in statuses[:-1]:
        assert status in (200, 404, 405)
    if closing and statuses and statuses[-1] in (400, 413, 431):
        assert out.endswith(wire.ERROR_BODIES[statuses[-1]])
        assert b"Connection: close\r\n" in out.rsplit(b"HTTP/1.1 ", 1)[1]


@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
def test_echo_returns_exactly_what_came(data: bytes, cuts: list[int]) -> None:
    session = ECHO(0.0)
    out = b""
    for piece in split(data, cuts):
        session.received(memoryview(bytearray(piece)), 1.0)
        out += b"".join(session.take_output())
    assert out == data
    session.eof_received(2.0)
    assert session.closing


def test_header_deadline_and_idle_deadline() -> None:
    session = session_factory(Settings(proto="http", idle_timeout=30, header_timeout=2))(0.0)
    assert session.deadline() == 30.0
    session.received(b"GET / HT", 10.0)
    assert session.deadline() == 12.0  # a started head must finish within 2 s
    assert session.expired(12.5)
    session.received(b"TP/1.1\r\n\r\n", 11.0)
    assert session.deadline() == 41.0  # complete: back to the idle timeout


def test_header_limit_counts_the_whole_head() -> None:
    session = session_factory(Settings(proto="http", max_header_bytes=1000))(0.0)
    session.received(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 1.0)
    assert session.take_output()[0].startswith(b"HTTP/1.1 431 ")
    assert session.closing


def test_file_output_is_a_slice(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    session = session_factory(Settings(proto="http", root=tmp_path))(0.0)
    session.received(b"GET /f.txt HTTP/1.1\r\n\r\n", 1.0)
    head, body = session.take_output()
    assert isinstance(head, bytes) and b"Content-Length: 10\r\n" in head
    assert isinstance(body, FileSlice) and (body.offset, body.count) == (0, 10)
    assert body.read_chunk(4) == b"0123"
    body.close()


def test_root_resolution_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (tmp_path / "s").write_text("secret")
    (root / "ok").write_text("ok")
    (root / "out").symlink_to(tmp_path / "s")
    files = FileRoot(root)
    assert files.resolve(b"/ok") is not None
    for bad in (b"/../s", b"/%2e%2e/s", b"/out", b"/ok%00", b"/..%2Fs", b"/%ff"):
        assert files.resolve(bad) is None, bad
