"""c-epoll's own hardening (issue #10): what its C parser and loop must hold that the
shared suite does not reach.

- Framing: a request whose lines end in a bare LF (or hold a stray CR) is answered as
  the Python core answers it, 400, at once: never silence until the header timeout. The
  other framing edge cases (blank lines before a request, Transfer-Encoding lists,
  HTTP/1.0 with Transfer-Encoding, unknown methods) give the core's bytes too.
- The header deadline runs from the first byte of a request, blank lines included.
- A client that pipelines a flood of requests and reads nothing holds the write
  high-water mark plus one response; once it reads, every request is answered, also
  those whose bytes were read before the output drained with no more input to come.
- accept() failing with EMFILE: open connections go on, one log line per episode,
  accepting resumes once descriptors free up.

Random streams against the core, for c-epoll as for every server, are
tests/test_fuzz_differential.py's.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.clients import get, recv_exactly, recv_until_closed, request, without_date
from tests.differential import core_answer
from tests.servers import RunningServer, running_server

NAME = "c-epoll"
HIGH_WATER = 256 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    # A long header deadline: an answer that comes only from the deadline fails the test.
    with running_server(NAME, "http", "--header-timeout", "30", "--idle-timeout", "30") as srv:
        yield srv


def _answer(server: RunningServer, request: bytes, half_close: bool) -> bytes:
    with server.connect() as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return without_date(recv_until_closed(sock, timeout=5))


# Bare LF and stray CR: answered (400, as llhttp) and closed without the client closing.
BARE = {
    "request-line": b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    "all-lines": b"GET / HTTP/1.1\nHost: x\n\n",
    "header-line": b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    "blank-line": b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    "partial-head": b"GET / HTTP/1.1\n",
    "stray-cr": b"GET / HTTP/1.1\rHost: x",
    "after-a-request": get("/") + b"GET / HTTP/1.1\nHost: x\n",
    "chunk-size": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\n",
    "chunk-data-end": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n",
    "chunk-trailer": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
}


@pytest.mark.parametrize("request_bytes", BARE.values(), ids=BARE.keys())
def test_bare_lf_answered_at_once(server: RunningServer, request_bytes: bytes) -> None:
    expected = core_answer(request_bytes)
    assert b" 400 " in expected  # what the core (llhttp) says: checked, not assumed
    assert _answer(server, request_bytes, half_close=False) == expected


# Framing the C parser decides by itself, each answered with the core's bytes.
FRAMING = {
    "blank-lines-before": b"\r\n\r\n\n\rGET / HTTP/1.1\r\n\r\n",
    "lf-before": b"\nGET / HTTP/1.1\r\n\r\n",
    "cr-before": b"\rGET / HTTP/1.1\r\n\r\n",
    "http10-te": b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "http10-te-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                            + get("/", version="1.0"),
    "http10-te-gzip": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: gzip\r\n"
                      b"\r\nGET /never HTTP/1.0\r\n\r\n",
    "http10-te-head": b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n",
    "http10-te-post": b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "http10-te-and-length": b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Length: 3\r\n\r\nabc",
    "te-gzip-chunked": b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                       + get("/x"),
    "te-two-headers": b"GET / HTTP/1.1\r\nTransfer-Encoding: x\r\n"
                      b"Transfer-Encoding: gzip,chunked \r\n\r\n0\r\n\r\n" + get("/"),
    "te-chunked-gzip": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te-chunked-twice": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-comma": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
    "te-unknown": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n",
    "te-empty": b"GET / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
    "big-length-then-te": b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n",
    "te-then-big-length": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                          b"Content-Length: 99999999\r\n\r\n",
    "unknown-method": b"FOO / HTTP/1.1\r\n\r\n",
    # A head already malformed before it ends: llhttp stops at the wrong byte, the core
    # answers then; c-epoll too, not at an end of head (or EOF) that makes it silent.
    "junk-request-line": b"Content-Length: 3\r\n",
    "lowercase-method": b"get / HTTP/1.1\r\n",
    "rtsp-method": b"PLAY / HTTP/1.1\r\nHost: x\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nBad Header: x\r\n",
    "folded-line": b"GET / HTTP/1.1\r\nX: a\r\n folded",
    "line-without-colon": b"GET / HTTP/1.1\r\nabc\r\nX",
    "control-in-value": b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
    "length-not-digits": b"GET / HTTP/1.1\r\nContent-Length: 1 2",
    "length-twice": b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "big-length-then-header": b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\nX",
    "big-length-then-junk": b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\nX y\r\n\r\n",
    "te-then-length-name": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length:",
    "target-high-byte": b"GET /\x80 HTTP/1.1\r\n\r\n",
    "asterisk-target": b"GET * HTTP/1.1\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n",
    "chunk-size-junk": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nx",
    # The versions llhttp takes (0.9 with no version at all, 1.0, 1.1, 2.0) and its rules.
    "http09": b"GET /\r\nHost: x\r\n\r\n",
    "http09-keep-alive": b"GET /\r\nConnection: keep-alive\r\n\r\n" + get("/x"),
    "http20-keep-alive": b"GET / HTTP/2.0\r\nConnection: keep-alive\r\n\r\n" + get("/x"),
    "http30": b"GET / HTTP/3.0\r\n\r\n",
    "http10-keep-alive-and-close": b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
                                   + get("/x", version="1.0"),
    "spaces-in-request-line": b"GET   /  HTTP/1.1\r\n\r\n",
    "space-then-line-end": b"GET /x \r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", FRAMING.values(), ids=FRAMING.keys())
def test_framing_same_bytes_as_core(server: RunningServer, request_bytes: bytes) -> None:
    assert _answer(server, request_bytes, half_close=True) == core_answer(request_bytes)


def _closed_within(sock: socket.socket, trickle: bytes, limit: float) -> float:
    """Send ``trickle`` every 0.2 s until the server closes; how long it took (or fail)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            sock.sendall(trickle)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return time.monotonic() - start
    raise AssertionError(f"still open after {limit} s of {trickle!r} every 0.2 s")


def test_blank_lines_do_not_extend_the_header_deadline() -> None:
    with running_server(NAME, "http", "--header-timeout", "1", "--idle-timeout", "30") as srv:
        with srv.connect() as sock:
            assert 0.8 <= _closed_within(sock, b"\r\n", limit=4) < 2.5
        # After a response the deadline starts again at the next request's first byte.
        with srv.connect() as sock:
            sock.sendall(get("/"))
            assert b" 200 " in recv_exactly(sock, 12, timeout=5) + sock.recv(65536)
            select.select([sock], [], [], 0.5)  # a pause longer than a tick, shorter than 1 s
            assert 0.8 <= _closed_within(sock, b"\r\n", limit=4) < 2.5


def _pss(server: RunningServer) -> int:
    return sum(p.memory_full_info().pss for p in server.tree())


def test_pipelined_flood_bounded_then_all_answered() -> None:
    """A client writes requests as fast as the server takes them and reads nothing: the
    server stops parsing at the mark and its memory stays put; when the client then
    reads, every request it sent is answered."""
    req = get("/")
    block = req * (65536 // len(req))
    with running_server(NAME, "http", "--idle-timeout", "30") as srv:
        with srv.connect() as probe:  # one answer first: its length, and a warm server
            one = len(request(probe, req).raw)
        baseline = _pss(srv)
        with srv.connect() as sock:
            sock.setblocking(False)
            sent = 0
            while sent < 8 << 20:  # until the server stops reading (or 8 MiB)
                _, writable, _ = select.select([], [sock], [], 0.5)
                if not writable:
                    break
                sent += sock.send(block[sent % len(block):])
            grown = _pss(srv) - baseline
            assert grown < HIGH_WATER + (2 << 20), f"grew {grown >> 10} KiB"
            tail = req[len(req) - (-sent) % len(req):] if sent % len(req) else b""
            answers = (sent + len(tail)) // len(req)
            got = 0
            deadline = time.monotonic() + 30
            while got < answers * one:
                left = deadline - time.monotonic()
                assert left > 0, f"{got // one} of {answers} answers after 30 s"
                readable, writable, _ = select.select([sock], [sock] if tail else [], [],
                                                      min(left, 1.0))
                if writable:
                    tail = tail[sock.send(tail):]
                if readable:
                    chunk = sock.recv(1 << 20)
                    assert chunk, f"closed after {got // one} of {answers} answers"
                    got += len(chunk)
            assert got == answers * one


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_descriptor_exhaustion_logged_once_and_recovered() -> None:
    with running_server(NAME, "echo", "--backlog", "64") as srv:
        first = srv.connect()
        held: list[socket.socket] = []
        try:
            first.sendall(b"a\n")
            assert recv_exactly(first, 2, timeout=5) == b"a\n"
            proc = psutil.Process(srv.proc.pid)
            limit = _open_fds(proc.pid) + 8
            proc.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
            for _ in range(16):  # 8 fit, 8 wait in the backlog while accept fails
                held.append(srv.connect())
            deadline = time.monotonic() + 5
            while "accept:" not in srv.stderr_text():
                assert time.monotonic() < deadline, "no log line for EMFILE"
                select.select([first], [], [], 0.05)
            # Open connections are still served while accept fails (several back-offs).
            for i in range(5):
                first.sendall(b"%d\n" % i)
                assert recv_exactly(first, 2, timeout=5) == b"%d\n" % i
            assert _open_fds(proc.pid) <= limit
            # Descriptors free up: the queued connections and an honest client are served.
            for sock in held[:12]:
                sock.close()
            with srv.connect() as honest:
                honest.sendall(b"honest\n")
                assert recv_exactly(honest, 7, timeout=3) == b"honest\n"
            for sock in held[12:]:
                sock.sendall(b"q\n")
                assert recv_exactly(sock, 2, timeout=3) == b"q\n"
            lines = [ln for ln in srv.stderr_text().splitlines() if ln.startswith("accept:")]
            assert len(lines) == 1, lines
            assert "Too many open files" in lines[0]
        finally:
            first.close()
            for sock in held:
                sock.close()
