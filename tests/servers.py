"""Start a registered server the way a user does and wait for its readiness line.

``running_server("epoll", "http")`` runs ``python -m servers.epoll_raw --proto
http --port 0``, waits (bounded) for ``listening on HOST:PORT`` and yields a
:class:`RunningServer`; leaving the block stops it with SIGTERM, kills what is left
of it and removes its stderr file. Starting and stopping are
:mod:`bench.server_process`'s, as in the harness.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from bench import server_process
from bench.server_process import ServerProcess
from servers.backend import Unavailable
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


class RunningServer:
    """A registry entry's server started by :func:`bench.server_process.start`, with what
    the tests ask of it."""

    def __init__(self, entry: Entry, process: ServerProcess) -> None:
        self.entry = entry
        self.process = process

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def address(self) -> tuple[str, int]:
        return self.process.address

    @property
    def descendants(self) -> list[psutil.Process]:
        return self.process.descendants

    @descendants.setter
    def descendants(self, procs: list[psutil.Process]) -> None:
        self.process.descendants = procs

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def tree(self) -> list[psutil.Process]:
        """The server process and all its descendants, as alive now."""
        return self.process.tree()

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stderr_text(self) -> str:
        return self.process.stderr_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 2.0) -> int | None:
        """Signal the server; return its exit code, or None if it outlived ``timeout``."""
        return self.process.terminate(sig, timeout)

    def leftovers(self) -> list[psutil.Process]:
        """Descendants recorded at stop time that are still alive (zombies count as gone)."""
        return self.process.leftovers()

    def kill_all(self) -> None:
        self.process.kill_all()


def start_server(entry: Entry | str, proto: str, *extra: str,
                 tmp_dir: str | None = None) -> RunningServer:
    """Start ``entry``'s server (bounded); :class:`Unavailable` when it says this machine
    cannot run it, RuntimeError with its stderr when it does not become ready."""
    if isinstance(entry, str):
        entry = BY_NAME[entry]
    argv = [sys.executable, *entry.argv, "--proto", proto, "--port", "0", *extra]
    try:
        process = server_process.start(argv, ready_timeout=READY_TIMEOUT, cwd=REPO,
                                       log_dir=tmp_dir, name=entry.name)
    except server_process.StartFailure as exc:
        if exc.skipped:  # this machine cannot run it (e.g. no io_uring here)
            raise Unavailable(exc.reason) from None
        raise RuntimeError(f"{entry.name} did not become ready: {exc.reason}; "
                           f"stderr: {exc.stderr}") from None
    return RunningServer(entry, process)


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
            server.stop()
        server.kill_all()  # what outlived it, or it and its tree if it outlived SIGTERM
        server.process.close()
