"""Same request, same bytes: every Python backend answers a corpus of HTTP requests
byte for byte like the reference backend, the ``Date`` value aside.

Each case is a list of pieces written one after another (so requests arrive
split, pipelined or both), then the client half-closes and reads until the
server closes: the answer to a case is everything the server sent. Cases run
twice, on the benchmark page (no ``--root``) and on a file root (files sent by
sendfile, read+send or pread, listings), and the reference answers are
themselves checked for the status lines they must contain, so a corpus that
every backend fails the same way would still fail here.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import recv_until_closed, without_date
from tests.servers import ids, running_server, user_space_entries

REFERENCE = "threaded"
PYTHON = [e for e in user_space_entries(kind="python") if "http" in e.protocols]
STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def _get(path: str, version: str = "1.1", headers: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: zoo\r\n{headers}\r\n".encode()


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# name -> (pieces, expected status codes in order, for the page and for the file root)
CASES: dict[str, tuple[list[bytes], list[int], list[int]]] = {
    "get": ([_get("/")], [200], [200]),
    "head": ([_get("/", method="HEAD")], [200], [200]),
    "not-found": ([_get("/nope")], [404], [404]),
    "head-not-found": ([_get("/nope", method="HEAD")], [404], [404]),
    "post-405": ([b"POST / HTTP/1.1\r\nHost: zoo\r\nContent-Length: 3\r\n\r\nabc"], [405], [405]),
    "garbage-400": ([b"\x16\x03\x01 not http at all\r\n\r\n"], [400], [400]),
    "bad-version-400": ([b"GET / HTTP/9.x\r\nHost: zoo\r\n\r\n"], [400], [400]),
    "body-413": ([b"GET / HTTP/1.1\r\nHost: zoo\r\nContent-Length: 99999999\r\n\r\n"],
                 [413], [413]),
    "header-431": ([b"GET / HTTP/1.1\r\nHost: zoo\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"],
                   [431], [431]),
    "pipelined": ([_get("/") + _get("/nope") + _get("/", method="HEAD")],
                  [200, 404, 200], [200, 404, 200]),
    "pipelined-then-close": ([_get("/") + _get("/", headers="Connection: close\r\n")
                              + _get("/never")], [200, 200], [200, 200]),
    "split-bytewise": (_bytewise(_get("/", headers="User-Agent: split\r\n")), [200], [200]),
    "split-mid-pipeline": ([_get("/")[:7], _get("/")[7:] + _get("/x")[:20], _get("/x")[20:]],
                           [200, 404], [200, 404]),
    "keep-alive-close": ([_get("/", headers="Connection: close\r\n")], [200], [200]),
    "http10": ([_get("/", version="1.0")], [200], [200]),
    "http10-keep-alive": ([_get("/", version="1.0", headers="Connection: keep-alive\r\n")
                           + _get("/nope", version="1.0")], [200, 404], [200, 404]),
    "error-after-good": ([_get("/") + b"BROKEN\r\n\r\n"], [200, 400], [200, 400]),
    "blank-lines-before": ([b"\r\n\n\r", b"\r\n" + _get("/")], [200], [200]),
    "bare-lf-400": ([b"GET / HTTP/1.1\nHost: zoo\n\n"], [400], [400]),
    "files": ([_get("/hello.txt") + _get("/data.bin") + _get("/sub/")
               + _get("/sub/page.html", method="HEAD") + _get("/../etc/passwd")
               + _get("/%2e%2e/hello.txt")], [404] * 6,
              [200, 200, 200, 200, 404, 404]),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("same-bytes-root")
    (path / "hello.txt").write_text("hello, zoo\n")
    (path / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (path / "sub").mkdir()
    (path / "sub" / "page.html").write_text("<p>hi</p>\n")
    stamp = 1_700_000_000  # the same Last-Modified for every run
    for file in (path / "hello.txt", path / "data.bin", path / "sub" / "page.html"):
        os.utime(file, (stamp, stamp))
    return path


def _exchange(address: tuple[str, int], pieces: list[bytes]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed (413, 431): read what it sent
        return without_date(recv_until_closed(sock, timeout=10))


def _answers(entry_name: object, mode: str, root: Path) -> dict[str, bytes]:
    extra = ("--root", str(root)) if mode == "files" else ()
    with running_server(entry_name, "http", *extra) as server:  # type: ignore[arg-type]
        return {name: _exchange(server.address, pieces) for name, (pieces, _, _) in CASES.items()}


@pytest.fixture(scope="module", params=["page", "files"])
def reference(request: pytest.FixtureRequest, root: Path) -> Iterator[tuple[str, dict]]:
    mode = request.param
    answers = _answers(REFERENCE, mode, root)
    for name, (_, page_codes, file_codes) in CASES.items():
        codes = [int(m) for m in STATUS_RE.findall(answers[name])]
        assert codes == (page_codes if mode == "page" else file_codes), (mode, name, codes)
    yield mode, answers


@pytest.mark.parametrize("entry", PYTHON, ids=ids(PYTHON))
def test_same_bytes_as_reference(entry: object, reference: tuple[str, dict],
                                 root: Path) -> None:
    mode, expected = reference
    got = _answers(entry, mode, root)
    different = [name for name in CASES if got[name] != expected[name]]
    assert not different, {name: (got[name][:300], expected[name][:300])
                           for name in different[:3]}


def test_c_epoll_same_bytes_on_the_page(reference: tuple[str, dict], root: Path) -> None:
    """c-epoll (C, no ``--root``) answers the page corpus with the core's bytes too."""
    mode, expected = reference
    if mode != "page":
        pytest.skip("c-epoll serves the benchmark page only")
    got = _answers("c-epoll", mode, root)
    different = [name for name in CASES if got[name] != expected[name]]
    assert not different, {name: (got[name][:300], expected[name][:300])
                           for name in different[:3]}
