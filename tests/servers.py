"""Start a registered server the way a user does and wait for its readiness line.

``running_server("epoll", "http")`` runs ``python -m servers.epoll_raw --proto
http --port 0``, waits (bounded) for ``listening on HOST:PORT`` and yields a
:class:`RunningServer`; leaving the block stops it with SIGTERM and checks that
nothing of it is left behind.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

from servers.backend import Unavailable, unavailable_reason
from servers.registry import BY_NAME, ENTRIES, Entry

READY_TIMEOUT = 20.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_space_entries(**wanted: object) -> list[Entry]:
    """Entries runnable on this host (not kernel modules), filtered by attributes."""
    out = []
    for entry in ENTRIES:
        if entry.kind == "kernel":
            continue
        if all(getattr(entry, key) == value for key, value in wanted.items()):
            out.append(entry)
    return out


def entries_for(proto: str) -> list[Entry]:
    return [e for e in user_space_entries() if proto in e.protocols]


def ids(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


@dataclass
class RunningServer:
    entry: Entry
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr_path: str
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def tree(self) -> list[psutil.Process]:
        """The server process and all its descendants, as alive now."""
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stderr_text(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 2.0) -> int | None:
        """Signal the server; return its exit code, or None if it outlived ``timeout``."""
        self.descendants = self.tree()[1:]
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self) -> list[psutil.Process]:
        """Descendants recorded at stop time that are still alive (zombies count as gone)."""
        left = []
        for proc in self.descendants:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        return left

    def kill_all(self) -> None:
        for proc in [*self.descendants]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            try:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
            except psutil.NoSuchProcess:
                pass
            self.proc.kill()
            self.proc.wait(5)


def start_server(entry: Entry | str, proto: str, *extra: str,
                 tmp_dir: str | None = None) -> RunningServer:
    if isinstance(entry, str):
        entry = BY_NAME[entry]
    argv = [sys.executable, *entry.argv, "--proto", proto, "--port", "0", *extra]
    stderr_path = os.path.join(tmp_dir or "/tmp", f"tcpzoo-{entry.name}-{os.getpid()}-"
                               f"{time.monotonic_ns()}.err")
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                                start_new_session=True)
    assert proc.stdout is not None
    line = _read_line(proc, READY_TIMEOUT)
    if not line.startswith("listening on "):
        proc.kill()
        code = proc.wait(5)
        with open(stderr_path, "rb") as f:
            err_text = f.read().decode(errors="replace")
        reason = unavailable_reason(code, err_text)
        if reason is not None:  # this machine cannot run it (e.g. no io_uring here)
            raise Unavailable(reason)
        raise RuntimeError(f"{entry.name} did not become ready: {line!r}; stderr: {err_text}")
    host, _, port = line[len("listening on "):].rpartition(":")
    return RunningServer(entry, proc, host, int(port), stderr_path)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return data.decode(errors="replace") + " (timed out)"
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode(errors="replace") + f" (exited {proc.wait(5)})"
            data += chunk
    return data.split(b"\n", 1)[0].decode()


@contextmanager
def running_server(entry: Entry | str, proto: str, *extra: str) -> Iterator[RunningServer]:
    """A started server; a test using it is skipped, with the server's reason, when the
    server reports that this machine cannot run it."""
    import pytest

    try:
        server = start_server(entry, proto, *extra)
    except Unavailable as exc:
        pytest.skip(f"server unavailable here: {exc}")
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            code = server.stop()
            if code is None:
                server.kill_all()
        else:
            server.kill_all()
