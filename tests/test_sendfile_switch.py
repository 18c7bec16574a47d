"""``--sendfile on|off``: files by sendfile(2) or by read+write, the same bytes either way.

Each server that can use sendfile(2) serves a generated file correctly in both modes,
and strace shows whether sendfile(2) moved it; servers that always read and write
refuse ``--sendfile on``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import files
from servers.registry import Entry
from tests.servers import REPO, ids, running_server, user_space_entries

SIZE = 3 * 1024 * 1024 + 17
CAN = [e for e in user_space_entries(sendfile=True)]
STRACE = shutil.which("strace") is not None
CANNOT = [e for e in user_space_entries(sendfile=False) if e.static_files]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return files.make_root(tmp_path_factory.mktemp("files"), (SIZE,))


def fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {files.url_path(SIZE)} HTTP/1.1\r\nHost: t\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = bytearray()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return body


def sendfile_calls(pid: int, port: int) -> tuple[bytes, int]:
    """The body fetched while strace watches the server's threads for sendfile(2)."""
    tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    args = [a for p in tree for a in ("-p", str(p))]
    trace = subprocess.Popen(["strace", "-f", "-e", "trace=sendfile", "-e", "signal=none",
                              *args], stderr=subprocess.PIPE, text=True)
    assert trace.stderr is not None
    attached, deadline = 0, time.monotonic() + 10
    while attached < len(tree):  # "Process N attached": strace is watching
        assert time.monotonic() < deadline, "strace did not attach"
        line = trace.stderr.readline()
        attached += " attached" in line
    try:
        body = fetch(port)
    finally:
        trace.terminate()
        _, err = trace.communicate(timeout=20)
    return body, err.count("sendfile(")


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize("entry", CAN, ids=ids(CAN))
def test_both_modes_same_bytes(entry: Entry, mode: str, root: Path) -> None:
    with running_server(entry, "http", "--root", str(root), "--sendfile", mode) as srv:
        if STRACE and entry.name != "forking":  # forking's child is born after attaching
            body, calls = sendfile_calls(srv.proc.pid, srv.port)
            assert (calls > 0) == (mode == "on"), calls
        else:
            body = fetch(srv.port)
        assert body == files.pattern(0, SIZE)


@pytest.mark.parametrize("entry", CANNOT, ids=ids(CANNOT))
def test_read_write_models_refuse_sendfile_on(entry: Entry, root: Path) -> None:
    proc = subprocess.run([sys.executable, *entry.argv, "--proto", "http", "--port", "0",
                           "--root", str(root), "--sendfile", "on"], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 2 and "--sendfile on" in proc.stderr
    with running_server(entry, "http", "--root", str(root), "--sendfile", "off") as srv:
        assert fetch(srv.port) == files.pattern(0, SIZE)
