"""Differential checks against the protocol core: its answer in-process, a server's over a socket.

:func:`make_root` builds the small file tree the tests serve (``FILE_TARGETS`` name
what is in it and around it; ``PAGE_TARGETS`` for a server without a root).

:func:`core_reply` feeds a whole stream to a fresh core session (sans-IO, no socket),
then end-of-file unless told not to, and gives every byte it would send (file slices
read back) and whether it then closes; :func:`core_answer` is its bytes after EOF.
:func:`socket_answer` writes the same stream to a server piece by piece, half-closes
and reads until the server closes; a reset is marked in the answer, because a reset
can destroy a response the peer never reads. Both blank the ``Date`` values.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import NamedTuple

from servers.core.session import FileSlice, session_factory, write_size
from servers.settings import Settings
from tests.clients import without_date

RESET = b"\n<connection reset>"
# What the servers under test serve: the benchmark page (no root), or make_root()'s tree.
PAGE_TARGETS = [b"/", b"/nope", b"/?x=1", b"/index.html", b"/guestbook"]
FILE_TARGETS = [b"/", b"/hello.txt", b"/sub/", b"/sub", b"/sub/page.html", b"/nope",
                b"/hello.txt?x=1", b"/%68ello.txt", b"/sub/../hello.txt", b"/empty"]


def make_root(path: Path) -> Path:
    """The small tree FILE_TARGETS names: a file, an empty file, a directory with a page."""
    path.mkdir()
    (path / "hello.txt").write_bytes(b"hello, zoo\n")
    (path / "empty").write_bytes(b"")
    (path / "sub").mkdir()
    (path / "sub" / "page.html").write_bytes(b"<p>hi</p>\n")
    for item in (path / "hello.txt", path / "empty", path / "sub" / "page.html", path / "sub"):
        os.utime(item, (1_700_000_000, 1_700_000_000))
    return path


class CoreReply(NamedTuple):
    answer: bytes  # Date values blanked
    closes: bool  # the core closes the connection after it


def core_reply(data: bytes, root: Path | None = None, *, eof: bool = True) -> CoreReply:
    """What the core sends for ``data`` (then end-of-file when ``eof``), with default
    limits, and whether it closes; a client that sends ``data`` and keeps its side open
    (``eof=False``) sees the same bytes up to the close."""
    now = time.monotonic()
    session = session_factory(Settings(proto="http", root=root))(now)
    session.received(data, now)
    if eof:
        session.eof_received(now)
    out = bytearray()
    # Bounded: each round either parses held input or ends (the output is taken whole).
    for _ in range(len(data) + 2):
        for item in session.take_output():
            session.sent(write_size(item), now)
            out += _read_slice(item) if isinstance(item, FileSlice) else item
        if not session.resume(now):
            break
    return CoreReply(without_date(bytes(out)), session.closing)


def core_answer(data: bytes, root: Path | None = None) -> bytes:
    """What the core sends for ``data`` then end-of-file."""
    return core_reply(data, root).answer


def _read_slice(item: FileSlice) -> bytes:
    try:
        chunks, offset, left = [], item.offset, item.count
        while left:
            chunk = os.pread(item.fileno(), min(left, 1 << 20), offset)
            if not chunk:
                raise AssertionError(f"{item.path!r} ended early")
            chunks.append(chunk)
            offset += len(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        item.close()


def socket_answer(address: tuple[str, int], pieces: tuple[bytes, ...] | list[bytes],
                  timeout: float = 10.0) -> bytes:
    """Write ``pieces`` one by one, half-close, read to the server's close (bounded)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server stopped reading (or reset): what it answered
        chunks = []
        total = 0
        deadline = time.monotonic() + timeout
        while total < 1 << 24:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no close within {timeout} s; got {b''.join(chunks)!r}")
            sock.settimeout(left)
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                chunks.append(RESET)
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return without_date(b"".join(chunks))
