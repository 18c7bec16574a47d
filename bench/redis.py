"""A real Redis for the guestbook: a private instance, or the user's own, and its wait.

:class:`PrivateRedis` starts ``redis-server`` (the distribution's) on a unix socket
in a temporary directory, with a free TCP port on loopback as well, no persistence
and ``hz 500`` so a blocked client's timeout is checked every 2 ms. It waits until
the server answers ``PING`` (bounded), and on leaving stops it and removes the
directory: nothing is left running. :func:`parse_addr` (from
:mod:`servers.redis_addr`) reads ``--redis ADDR`` (``HOST:PORT`` or ``unix:PATH``);
:func:`calibrate_wait` measures what a ``BLPOP`` of W ms really takes on that Redis;
:func:`hz_warning` says when a user's Redis checks timeouts too rarely for the W asked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from types import TracebackType

from servers.core import resp
from servers.redis_addr import RedisAddr, parse_addr

__all__ = ["Client", "PrivateRedis", "RedisAddr", "RedisError", "calibrate_wait",
           "hz_warning", "info", "parse_addr"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PRIVATE_HZ = 500


class RedisError(RuntimeError):
    """Redis could not be started, reached or understood."""


class Client:
    """A blocking Redis connection for the harness and the tests (not for servers)."""

    def __init__(self, addr: RedisAddr, timeout: float = 5.0) -> None:
        self.addr = addr
        self._sock = addr.connect(timeout)
        self._reader = resp.ReplyReader()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, *args: resp.Arg) -> object:
        """Send one command, return its reply (a ReplyError value for ``-ERR``)."""
        self._sock.sendall(resp.encode_command(*args))
        while not self._reader.available:
            data = self._sock.recv(65536)
            if not data:
                raise RedisError(f"{self.addr} closed the connection")
            self._reader.feed(data)
        return self._reader.take(1)[0]


def info(addr: RedisAddr, section: str = "server") -> dict[str, str]:
    """``INFO section`` as a dict of its ``key:value`` lines."""
    with Client(addr) as c:
        raw = c.call("INFO", section)
    if not isinstance(raw, bytes):
        raise RedisError(f"INFO {section} answered {raw!r}")
    out = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def calibrate_wait(addr: RedisAddr, wait_ms: float, rounds: int = 8) -> float:
    """The median time, in ms, that ``BLPOP`` with a ``wait_ms`` timeout really takes."""
    from servers.core.guestbook import WAIT_KEY

    if wait_ms <= 0:
        return 0.0
    took = []
    with Client(addr, timeout=max(5.0, wait_ms / 100)) as c:
        for _ in range(rounds):
            start = time.perf_counter()
            reply = c.call("BLPOP", WAIT_KEY, f"{wait_ms / 1000:.6f}")
            took.append((time.perf_counter() - start) * 1000)
            if reply is not None:
                raise RedisError(f"BLPOP on the always-empty {WAIT_KEY} answered {reply!r}")
    return statistics.median(took)


def hz_warning(addr: RedisAddr, wait_ms: float) -> str | None:
    """A warning when Redis checks blocked clients too rarely for ``wait_ms``, else None.

    A blocked client's timeout is seen at the next of ``hz`` checks a second, so a
    wait shorter than 1000/hz ms lasts about 1000/hz ms.
    """
    if wait_ms <= 0:
        return None
    hz = int(info(addr).get("hz", "10"))
    step = 1000 / hz
    if step > wait_ms / 2:
        return (f"{addr}: hz {hz} checks blocked clients every {step:g} ms, too coarse for a "
                f"{wait_ms:g} ms backend wait (set hz {PRIVATE_HZ}, or let the harness start "
                f"its own Redis)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of our own, for the length of a ``with`` block.

    ``addr`` is its unix socket; ``tcp_addr`` its loopback port. :meth:`stop` and
    :meth:`start` let a test take Redis away mid-run and bring it back at the same
    addresses.
    """

    def __init__(self, binary: str | None = None, hz: int = PRIVATE_HZ) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(found):
            raise RedisError("redis-server not found: apt-get install redis-server "
                             "(./zoo setup does)")
        self.binary = found
        self.hz = hz
        self._dir = tempfile.mkdtemp(prefix="tcpzoo-redis-")
        self.addr = RedisAddr(path=os.path.join(self._dir, "redis.sock"))
        self.tcp_addr = RedisAddr(host="127.0.0.1", port=_free_port())
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = os.path.join(self._dir, "redis.log")

    def __enter__(self) -> PrivateRedis:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (again) and wait until it answers PING."""
        if self.running:
            return
        argv = [
            self.binary, "--port", str(self.tcp_addr.port), "--bind", "127.0.0.1",
            "--unixsocket", self.addr.path, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", self._dir,
            "--hz", str(self.hz), "--daemonize", "no", "--logfile", self._log,
            "--maxclients", "10000", "--protected-mode", "yes",
        ]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RedisError(f"redis-server exited {self._proc.returncode}: {err.strip()} "
                                 f"{self._tail_log()}")
            try:
                with Client(self.addr, timeout=1.0) as c:
                    if c.call("PING") == b"PONG":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server did not answer PING in {START_TIMEOUT:g}s "
                                 f"{self._tail_log()}")
            time.sleep(0.02)  # bounded by the deadline above; redis starts in ~10 ms

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after a bound); the addresses stay reserved."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _tail_log(self) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as f:
                return "(log: " + " | ".join(f.read().splitlines()[-5:]) + ")"
        except OSError:
            return ""
