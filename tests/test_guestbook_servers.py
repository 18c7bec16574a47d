"""The guestbook on every backend that serves it, over real sockets and a real Redis.

Each server is started as a user starts it, with ``--redis`` pointing at a private
``redis-server`` the suite starts itself. The page, the form, pipelining, escaping,
the backend wait, and Redis going away mid-load and coming back.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import pytest

from bench import loadgen
from bench import redis as zredis
from servers.core import guestbook, wire
from servers.core.http import HttpApp
from servers.registry import Entry
from servers.settings import Settings
from tests.private_redis import private_redis
from tests.servers import REPO, ids, running_server, user_space_entries

SERVING = [e for e in user_space_entries() if e.guestbook]
NOT_SERVING = [e for e in user_space_entries() if not e.guestbook and "http" in e.protocols]
DATE = re.compile(rb"\r\nDate: [^\r\n]+\r\n")
VISITS = re.compile(rb"Visits: \d+</p>")
FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"


@pytest.fixture(scope="module")
def redis(shared_redis: zredis.PrivateRedis) -> zredis.PrivateRedis:
    return shared_redis


def post_request(fields: dict[str, str], extra: bytes = b"") -> bytes:
    body = urlencode(fields).encode()
    return (b"POST /guestbook HTTP/1.1\r\nHost: t\r\n" + FORM + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def read_responses(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """``count`` whole responses (framed by Content-Length) from ``sock``."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data, out = b"", []
    while len(out) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            m = re.search(rb"\r\nContent-Length: (\d+)\r\n", data[:end + 2])
            assert m, data[:end]
            total = end + 4 + int(m.group(1))
            if len(data) >= total:
                out.append(data[:total])
                data = data[total:]
                continue
        assert time.monotonic() < deadline, f"{len(out)} of {count} responses"
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {count} responses"
        data += chunk
    return out


def read_until(sock: socket.socket, tail: bytes, timeout: float = 10.0) -> bytes:
    """Everything ``sock`` sends until what it sent ends with ``tail``."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(tail):
        assert time.monotonic() < deadline, data[-200:]
        chunk = sock.recv(65536)
        assert chunk, data[-200:]
        data += chunk
    return data


def split(data: bytes, heads_only: list[bool]) -> list[bytes]:
    """Responses back to back, each framed by its Content-Length (or its head alone)."""
    out, pos = [], 0
    for head_only in heads_only:
        end = data.index(b"\r\n\r\n", pos) + 4
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", data[pos:end])
        assert m, data[pos:end]
        end += 0 if head_only else int(m.group(1))
        out.append(data[pos:end])
        pos = end
    assert pos == len(data), data[pos:pos + 200]
    return out


def exchange(port: int, request: bytes, count: int = 1) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return read_responses(s, count)


def status(response: bytes) -> int:
    return int(response[9:12])


def normalised(response: bytes) -> bytes:
    return VISITS.sub(b"Visits: N</p>", DATE.sub(b"\r\nDate: -\r\n", response))


def core_page(addr: zredis.RedisAddr) -> bytes:
    """What the in-process core answers to GET /guestbook, with the same Redis."""
    session = HttpApp(Settings(proto="http", redis=addr)).new_session(time.monotonic())
    session.received(b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n", time.monotonic())
    call = session.take_backend_call()
    assert call is not None
    with addr.connect() as s:
        s.sendall(call.commands)
        from servers.core.resp import ReplyReader

        reader = ReplyReader()
        while reader.available < call.replies:
            reader.feed(s.recv(65536))
        session.backend_replied(reader.take(call.replies), time.monotonic())
    return b"".join(w for w in session.take_output() if isinstance(w, bytes))


@pytest.mark.parametrize("entry", SERVING, ids=ids(SERVING))
def test_page_form_and_same_bytes_as_the_core(entry: Entry,
                                              redis: zredis.PrivateRedis) -> None:
    with running_server(entry, "http", "--redis", str(redis.addr)) as srv:
        first = exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")[0]
        assert status(first) == 200 and guestbook.PAGE_MARKER in first
        message = f"hello from {entry.name}"
        (answer,) = exchange(srv.port, post_request({"name": entry.name, "message": message}))
        assert status(answer) == 303
        assert b"\r\nLocation: /guestbook\r\n" in answer
        page = exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")[0]
        assert f"<b>{entry.name}</b>: {message}".encode() in page
        assert normalised(page) == normalised(core_page(redis.addr))


@pytest.mark.parametrize("entry", SERVING, ids=ids(SERVING))
def test_pipelined_in_order_with_escaping(entry: Entry, redis: zredis.PrivateRedis) -> None:
    nasty = "<script>alert(\"x\")</script>'&"
    with running_server(entry, "http", "--redis", str(redis.addr)) as srv:
        pipeline = (post_request({"name": "eve", "message": nasty})
                    + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                    + b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n"
                    + post_request({"name": "eve"})  # no message: 400, nothing stored
                    + b"HEAD /guestbook HTTP/1.1\r\nHost: t\r\n\r\n"
                    + b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(pipeline)
            got = split(read_until(s, b"404 Not Found\n"), [False] * 4 + [True, False])
        assert [status(r) for r in got] == [303, 200, 200, 400, 200, 404]
        assert got[1].endswith(wire.PAGE_BODY)
        assert b"<script>" not in got[2]
        assert b"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&amp;" in got[2]
        assert b"message is missing" in got[3]
        assert got[4].startswith(b"HTTP/1.1 200 OK\r\n") and status(got[5]) == 404


@pytest.mark.parametrize("entry", SERVING, ids=ids(SERVING))
def test_backend_wait_is_spent_in_redis(entry: Entry, redis: zredis.PrivateRedis) -> None:
    with running_server(entry, "http", "--redis", str(redis.addr),
                        "--backend-wait-ms", "30") as srv:
        exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")  # connects Redis
        start = time.perf_counter()
        (page,) = exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")
        took = time.perf_counter() - start
        assert status(page) == 200
        assert took >= 0.028, f"a 30 ms backend wait took {took * 1000:.1f} ms"
        start = time.perf_counter()
        exchange(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert time.perf_counter() - start < took  # the page does not wait on Redis


@pytest.mark.parametrize("entry", SERVING, ids=ids(SERVING))
def test_redis_lost_mid_load_then_back(entry: Entry) -> None:
    """503 while Redis is away, every other route served, recovery without a restart."""
    with private_redis() as own, running_server(entry, "http", "--redis", str(own.tcp_addr)) as srv:
        results: list[dict] = []
        load = threading.Thread(target=lambda: results.append(loadgen.run(
            "127.0.0.1", srv.port, "guestbook", 4, 1.2, threads=1, timeout=2.0)))
        load.start()
        time.sleep(0.3)  # the load is running: now take Redis away, mid-run
        own.stop()
        lost = exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")[0]
        assert status(lost) == 503
        assert lost.endswith(wire.GUESTBOOK["unavailable_body"].encode())
        assert exchange(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")[0].endswith(
            wire.PAGE_BODY)
        own.start()
        load.join(15)
        assert not load.is_alive()
        (result,) = results
        assert result["requests"] > 0 and result["errors"]["status"] > 0, result
        for _ in range(20):  # a worker's dead connection fails once, then it reconnects
            page = exchange(srv.port, b"GET /guestbook HTTP/1.1\r\nHost: t\r\n\r\n")[0]
            if status(page) == 200:
                break
        assert status(page) == 200
        assert srv.proc.poll() is None


@pytest.mark.parametrize("entry", NOT_SERVING, ids=ids(NOT_SERVING))
def test_servers_without_a_guestbook_refuse_redis(entry: Entry) -> None:
    proc = subprocess.run([sys.executable, *entry.argv, "--proto", "http", "--port", "0",
                           "--redis", "127.0.0.1:1"], capture_output=True, text=True,
                          timeout=30, cwd=REPO)
    assert proc.returncode == 2
    assert "--redis" in proc.stderr


def test_bad_redis_flags() -> None:
    for args in (["--redis", "nowhere"], ["--backend-wait-ms", "5"],
                 ["--redis", "127.0.0.1:6379", "--backend-wait-ms", "-1"],
                 ["--proto", "echo", "--redis", "127.0.0.1:6379"]):
        proc = subprocess.run([sys.executable, "-m", "servers.threaded", "--port", "0", *args],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        assert proc.returncode == 2, args
        assert "error:" in proc.stderr
