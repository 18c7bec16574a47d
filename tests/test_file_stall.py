"""A peer that stops reading in the middle of a file is let go, on every server.

A client asks for a large file with a small receive buffer and then never reads: each
server's send of that file stops progressing. The connection must end about
``--idle-timeout`` after the last progress, as it does for a stalled response of bytes,
whether the model sends the file with sendfile(2), in chunks from a task, or from a
thread; a server that waits for the file to finish would hold the connection (and,
for a thread model, a worker) for as long as the peer likes.

"Ended" is read from the server's side: no socket of the server's process tree is
still connected to the client's address. (A graceful close queues its FIN behind the
unread file data, so the client itself may never see it.)

And the other side of that bound: a peer that reads slowly but steadily gets a file
that takes several idle timeouts to leave, since each piece is progress.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest

from servers.settings import MIB
from tests.clients import get
from tests.servers import entries_for, ids, running_server

IDLE = 1.0
FILE_BYTES = 32 << 20  # far more than the socket buffers on both sides hold
GIVE_UP = 12.0  # seconds after the stall: a server still holding it by then fails

ENTRIES = [e for e in entries_for("http") if e.static_files]


def _connected_to(procs: list[psutil.Process], address: tuple[str, int]) -> bool:
    """Whether any of ``procs`` has a TCP socket whose peer is ``address``."""
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and (c.raddr.ip, c.raddr.port) == address for c in conns):
            return True
    return False


@pytest.mark.parametrize("entry", ENTRIES, ids=ids(ENTRIES))
def test_peer_that_stops_reading_a_file_is_dropped_after_the_idle_timeout(
        entry, tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"z" * FILE_BYTES)
    with running_server(entry, "http", "--root", str(tmp_path),
                        "--idle-timeout", str(IDLE)) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(10)
        sock.connect(server.address)
        client = sock.getsockname()[:2]
        try:
            sock.sendall(get("/big.bin"))
            head = sock.recv(4096)  # the response has begun: the file is being sent
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
            stalled = time.monotonic()
            procs = server.tree()
            held = True
            while held and time.monotonic() - stalled < GIVE_UP:
                time.sleep(0.1)  # polling the server's sockets: nothing to wait on
                held = _connected_to(procs, client)
            let_go = time.monotonic() - stalled
        finally:
            sock.close()
        assert not held, f"still connected {GIVE_UP:g} s after the peer stopped reading"
        assert let_go >= IDLE * 0.5, f"dropped {let_go:.2f} s after the stall: too soon"


@pytest.mark.parametrize("entry", ENTRIES, ids=ids(ENTRIES))
def test_slow_steady_reader_gets_a_response_longer_than_the_idle_timeout(
        entry, tmp_path: Path) -> None:
    """12 MiB read at about 4 MiB/s with a 1 s idle timeout: each send progresses well
    within the timeout, though the whole response takes about three of them."""
    data = bytes(range(256)) * (48 * 1024)
    (tmp_path / "f.bin").write_bytes(data)
    with running_server(entry, "http", "--root", str(tmp_path),
                        "--idle-timeout", str(IDLE)) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(server.address)
        sock.sendall(get("/f.bin", headers="Connection: close\r\n"))
        sock.setblocking(False)
        received = bytearray()
        began = time.monotonic()
        closed = False
        while not closed and time.monotonic() - began < 30:
            time.sleep(0.25)  # the pace of a slow reader, not a wait for the server
            taken = 0
            while taken < MIB:  # at most 1 MiB a turn
                try:
                    piece = sock.recv(MIB - taken)
                except BlockingIOError:
                    break
                closed = not piece
                if closed:
                    break
                taken += len(piece)
                received += piece
        took = time.monotonic() - began
        sock.close()
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        assert body == data, f"{len(body)} of {len(data)} bytes in {took:.1f} s"
        assert took > 2 * IDLE, f"read in {took:.1f} s: not slower than the idle timeout"
