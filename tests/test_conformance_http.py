"""HTTP/1.1 conformance for every backend: the page, keep-alive, pipelining, errors, files."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.core import wire
from tests.clients import ResponseReader, get, recv_until_closed, request
from tests.servers import RunningServer, entries_for, ids, running_server

HTTP = entries_for("http")
FILES = [e for e in HTTP if e.static_files]
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"


@pytest.fixture(scope="module", params=HTTP, ids=ids(HTTP))
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(request.param, "http", "--idle-timeout", "10") as srv:
        yield srv


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("www")
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, zoo\n")
    (root / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    (root / "style.css").write_bytes(b"body{}\n")
    (root / "sub dir").mkdir()
    (root / "sub dir" / "inner.html").write_bytes(b"<p>inner</p>\n")
    (root / "empty").write_bytes(b"")
    (root / "link-out").symlink_to(base / "secret.txt")
    (root / "link-in").symlink_to(root / "hello.txt")
    (root / "dir-out").symlink_to(base)
    return root


@pytest.fixture(scope="module", params=FILES, ids=ids(FILES))
def files(request: pytest.FixtureRequest, tree: Path) -> Iterator[RunningServer]:
    with running_server(request.param, "http", "--root", str(tree)) as srv:
        yield srv


def test_get_page(server: RunningServer) -> None:
    with server.connect() as sock:
        resp = request(sock, get("/"))
    assert resp.status == 200
    assert resp.body == wire.PAGE_BODY
    assert resp.header("content-length") == str(len(wire.PAGE_BODY))
    assert resp.header("content-type") == wire.PAGE_CONTENT_TYPE
    assert resp.header("server") == wire.SERVER
    assert resp.header("date", ) and resp.header("date").endswith(" GMT")
    assert resp.header("connection") is None


def test_head_has_headers_and_no_body(server: RunningServer) -> None:
    with server.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(get("/", method="HEAD") + get("/"))
        head = reader.read(head_only=True)
        full = reader.read()
    assert head.status == 200
    assert head.header("content-length") == str(len(wire.PAGE_BODY))
    assert full.body == wire.PAGE_BODY  # proves HEAD sent no body: the next response parses


def test_1000_requests_on_one_connection(server: RunningServer) -> None:
    with server.connect() as sock:
        reader = ResponseReader(sock)
        for _ in range(1000):
            sock.sendall(get("/"))
            resp = reader.read()
            assert resp.status == 200 and resp.body == wire.PAGE_BODY


def test_100_pipelined_requests_answered_in_order(server: RunningServer) -> None:
    paths = ["/" if i % 3 else f"/missing-{i}" for i in range(100)]
    with server.connect() as sock:
        sock.sendall(b"".join(get(p) for p in paths))
        reader = ResponseReader(sock)
        statuses = [reader.read().status for _ in paths]
    assert statuses == [200 if p == "/" else 404 for p in paths]


def test_request_one_byte_at_a_time(server: RunningServer) -> None:
    with server.connect() as sock:
        for byte in get("/"):
            sock.sendall(bytes([byte]))
        resp = ResponseReader(sock).read()
    assert resp.status == 200 and resp.body == wire.PAGE_BODY


def test_connection_close_is_honoured(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(get("/", headers="Connection: close\r\n"))
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(wire.PAGE_BODY)


def test_http10_closes_unless_keep_alive(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(get("/", version="1.0"))
        assert recv_until_closed(sock).endswith(wire.PAGE_BODY)
    with server.connect() as sock:
        reader = ResponseReader(sock)
        for _ in range(3):
            sock.sendall(get("/", version="1.0", headers="Connection: keep-alive\r\n"))
            resp = reader.read()
            assert resp.status == 200 and resp.header("connection") == "keep-alive"


def test_body_is_read_and_discarded(server: RunningServer) -> None:
    post = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    chunked = (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
    with server.connect() as sock:
        sock.sendall(post + chunked + get("/"))
        reader = ResponseReader(sock)
        first, second, third = reader.read(), reader.read(), reader.read()
    assert first.status == 405 and first.header("allow") == wire.ALLOW
    assert second.status == 405
    assert third.status == 200 and third.body == wire.PAGE_BODY


def _error_then_close(server: RunningServer, raw: bytes) -> bytes:
    with server.connect() as sock:
        sock.sendall(raw)
        return recv_until_closed(sock)


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/9x\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
], ids=["binary", "bad-header", "bad-version", "bad-length"])
def test_malformed_is_400_then_close(server: RunningServer, raw: bytes) -> None:
    data = _error_then_close(server, raw)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(wire.ERROR_BODIES[400])


def test_unknown_path_is_404_and_keeps_connection(server: RunningServer) -> None:
    with server.connect() as sock:
        reader = ResponseReader(sock)
        sock.sendall(get("/nope"))
        resp = reader.read()
        assert resp.status == 404 and resp.body == wire.ERROR_BODIES[404]
        sock.sendall(get("/"))
        assert reader.read().status == 200


def test_other_method_is_405_with_allow(server: RunningServer) -> None:
    with server.connect() as sock:
        resp = request(sock, get("/", method="DELETE"))
    assert resp.status == 405
    assert resp.header("allow") == wire.ALLOW
    assert resp.body == wire.ERROR_BODIES[405]


def test_huge_header_is_431(server: RunningServer) -> None:
    raw = get("/", headers="X-Big: " + "a" * 9000 + "\r\n")
    data = _error_then_close(server, raw)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert data.endswith(wire.ERROR_BODIES[431])


def test_endless_header_is_431_with_bounded_memory(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")


def test_body_over_limit_is_413(server: RunningServer) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000
    data = _error_then_close(server, raw)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.endswith(wire.ERROR_BODIES[413])


def test_chunked_body_over_limit_is_413(server: RunningServer) -> None:
    chunk = b"x" * 65536
    raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(raw)
        try:
            for _ in range(40):  # 2.5 MiB in total, the limit is 1 MiB
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 ")


# -- static files (backends that serve --root) --------------------------------------------


def test_small_file(files: RunningServer, tree: Path) -> None:
    with files.connect() as sock:
        resp = request(sock, get("/hello.txt"))
    assert resp.status == 200
    assert resp.body == b"hello, zoo\n"
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.header("last-modified", ) and resp.header("last-modified").endswith(" GMT")


def test_16mib_file_identical(files: RunningServer, tree: Path) -> None:
    expected = (tree / "big.bin").read_bytes()
    with files.connect() as sock:
        sock.sendall(get("/big.bin") + get("/style.css"))
        reader = ResponseReader(sock, timeout=60)
        big = reader.read()
        css = reader.read()
    assert big.status == 200 and big.header("content-type") == "application/octet-stream"
    assert big.body == expected
    assert css.body == b"body{}\n" and css.header("content-type") == "text/css; charset=utf-8"


def test_head_of_file_and_empty_file(files: RunningServer) -> None:
    with files.connect() as sock:
        sock.sendall(get("/big.bin", method="HEAD") + get("/empty"))
        reader = ResponseReader(sock)
        head = reader.read(head_only=True)
        empty = reader.read()
    assert head.header("content-length") == str(16 * 1024 * 1024)
    assert empty.status == 200 and empty.body == b""


def test_directory_listing(files: RunningServer) -> None:
    with files.connect() as sock:
        root = request(sock, get("/"))
        sub = request(sock, get("/sub%20dir/"))
    assert root.status == 200 and root.header("content-type").startswith("text/html")
    for name in ("hello.txt", "big.bin", "sub%20dir/", "link-in"):
        assert f'href="/{name}"'.encode() in root.body
    assert b'href="/sub%20dir/inner.html"' in sub.body


def test_symlink_inside_root_is_served(files: RunningServer) -> None:
    with files.connect() as sock:
        assert request(sock, get("/link-in")).body == b"hello, zoo\n"


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt", "/..%2fsecret.txt",
    "/sub%20dir/../../secret.txt", "//../secret.txt", "/link-out", "/dir-out/secret.txt",
    "/./../secret.txt", "/%252e%252e/secret.txt", "/hello.txt%00", "/..\\secret.txt",
    "http://evil/../secret.txt",
])
def test_path_escapes_never_leak(files: RunningServer, path: str) -> None:
    with files.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = recv_until_closed(sock)
    assert SECRET not in data
    assert data.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 400 "))


def test_files_need_root(server: RunningServer) -> None:
    with server.connect() as sock:
        assert request(sock, get("/etc/passwd")).status == 404


def test_peer_reset_does_not_hurt(server: RunningServer) -> None:
    for _ in range(20):
        sock = server.connect()
        sock.sendall(get("/") * 50)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    with server.connect() as sock:
        assert request(sock, get("/")).status == 200
