"""Helpers for the kernel suite: loading modules, bounded socket exchanges, dmesg."""

from __future__ import annotations

import errno
import os
import platform
import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import server_process
from bench.server_process import ServerProcess
from servers.backend import Unavailable
from servers.kmod_launch import KMOD_DIR, free_port, load_module, unload_module

__all__ = ["KMOD_DIR", "Unavailable", "free_port", "load_module", "unload_module"]

MODULE_NAMES = ("kecho", "khttpd", "drop_tcp_sock")
LAUNCH_TIMEOUT = 30.0  # module load under TCG included
BAD_LOG = re.compile(r"Oops|BUG|WARNING|Call Trace|general protection|kernel BUG")


def vermagic(ko: Path) -> str | None:
    """The kernel release a .ko was built for (first word of its vermagic)."""
    m = re.search(rb"vermagic=([^\s\x00]+)", ko.read_bytes())
    return m.group(1).decode() if m else None


def why_not_runnable() -> str | None:
    """None when this kernel can load the kmod/ modules, else the reason."""
    if os.environ.get("TCPZOO_GUEST") != "1":
        return "not in the bench.vm guest (run: python -m bench.vm test)"
    if os.geteuid() != 0:
        return "loading modules needs root"
    if "nomodule" in Path("/proc/cmdline").read_text().split():
        return "kernel booted with nomodule"
    try:
        if Path("/proc/sys/kernel/modules_disabled").read_text().strip() != "0":
            return "module loading is disabled (kernel.modules_disabled)"
    except OSError:
        return "kernel has no module support"
    release = platform.release()
    for name in MODULE_NAMES:
        ko = KMOD_DIR / f"{name}.ko"
        if not ko.is_file():
            return f"{ko} not built (make -C kmod)"
        built = vermagic(ko)
        if built != release:
            return f"{ko.name} is built for {built}, this kernel is {release}"
    return None


def loaded_modules() -> set[str]:
    return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}


def load(name: str, **params: object) -> None:
    """Load kmod/<name>.ko with ``key=value`` parameters (bools as 0/1)."""
    args = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in params.items()]
    load_module(KMOD_DIR / f"{name}.ko", args)


def unload(name: str, timeout: float = 10.0) -> float:
    """Unload ``name``; returns the seconds it took."""
    start = time.monotonic()
    unload_module(name, timeout)
    return time.monotonic() - start


def unload_all() -> None:
    for name in MODULE_NAMES:
        if name in loaded_modules():
            unload(name)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def small_buffers() -> socket.socket:
    """A TCP socket with 64 KiB send and receive buffers: a client that stops reading
    fills them soon, so the server's side stalls within a bounded number of bytes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    return s


def exchange(sock: socket.socket, data: bytes, want: int, timeout: float = 30.0) -> bytes:
    """Send ``data`` while reading; return once ``want`` bytes came back (or EOF).

    Reading and writing together means a large payload cannot deadlock against a
    server that stops reading while its own output is not read.
    """
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    got = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0))
        while len(got) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"got {len(got)} of {want} bytes in {timeout}s")
            for _key, events in sel.select(min(left, 1.0)):
                if events & selectors.EVENT_WRITE and view:
                    try:
                        view = view[sock.send(view):]
                    except BlockingIOError:
                        pass
                    if not view:
                        sel.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return bytes(got)
                    got += chunk
    sock.setblocking(True)
    return bytes(got)


def read_until_eof(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 22) -> bytes:
    """Everything the peer sends until it closes; TimeoutError if it does not."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    got = bytearray()
    while len(got) < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("peer did not close")
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the peer has closed (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)


def stuff_until_stalled(s: socket.socket, budget: int, stall_s: float, limit_s: float) -> int:
    """Send (never reading) until the peer stops taking bytes; the bytes it took."""
    s.setblocking(False)
    chunk = b"\0x" * 32768
    sent = 0
    deadline = time.monotonic() + limit_s
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_WRITE)
        while sent < budget and time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
                continue
            except BlockingIOError:
                pass
            if not sel.select(stall_s):
                break  # no room for stall_s: the server stopped reading
    return sent


def read_exactly(s: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Exactly ``n`` bytes from ``s``; fails on EOF or after ``timeout`` seconds."""
    s.settimeout(timeout)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"got {len(got)} of {n} bytes"
        chunk = s.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def drip(sock: socket.socket, data: bytes, interval: float, limit_s: float,
         eof_counts: bool = True) -> float | None:
    """Send ``data`` a byte every ``interval`` s; seconds until the peer closed, or None.

    The peer has closed once a send fails or a reset arrives (it dropped the
    connection while we were still sending), or, if ``eof_counts``, once it
    signals EOF. Without ``eof_counts`` (a peer that already shut its side
    down) only the reset counts.
    """
    start = time.monotonic()
    for byte in data:
        if time.monotonic() - start > limit_s:
            return None
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - start
        if eof_counts:
            gone = closed_by_peer(sock, interval)
        else:
            time.sleep(interval)  # the pace of the drip, not a wait for an event
            gone = False
        if gone or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return time.monotonic() - start
    return None


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def dmesg() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout


def tcp_states(port: int) -> list[str]:
    """Hex TCP states of IPv4 sockets with ``port`` as their local port (/proc/net/tcp)."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local = fields[1]
        if int(local.split(":")[1], 16) == port:
            states.append(fields[3])
    return states


def a_free_port() -> int:
    return free_port("127.0.0.1")


def tcp_sockstat() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
    raise KeyError("TCP")


def threads_named(prefix: str) -> list[str]:
    """Names of the tasks whose comm starts with ``prefix``."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name.startswith(prefix):
            names.append(name)
    return names


def poll_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Check ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def assert_serves(port: int, proto: str) -> None:
    """One exchange with the kernel server on ``port``: an echo comes back whole, or the
    page's status line is 200."""
    with connect(port) as s:
        if proto == "echo":
            assert exchange(s, b"hi\0there", 8) == b"hi\0there"
        else:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            ok = b"HTTP/1.1 200 OK\r\n"
            assert read_exactly(s, len(ok)) == ok


def launch(module: str, *extra: str, cpu: int | None = None) -> ServerProcess:
    """``servers.kmod_launch`` started as the harness starts a kernel server (pinned to
    ``cpu`` when given), once it announced ``listening on 127.0.0.1:PORT``."""
    argv = [sys.executable, "-m", "servers.kmod_launch", "--module", module, "--port", "0",
            *extra]
    try:
        server = server_process.start(argv, ready_timeout=LAUNCH_TIMEOUT,
                                      cpus=None if cpu is None else [cpu], name=module)
    except server_process.StartFailure as exc:
        pytest.fail(f"{module}: the launcher did not announce: {exc.reason}; "
                    f"stderr: {exc.stderr}")
    assert server.host == "127.0.0.1", server.address
    return server
