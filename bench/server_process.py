"""Run a server process from its argv: start it, wait for its readiness line, stop it.

The one way a server is started and stopped, by the harness (:mod:`bench.runner`, and
through it :mod:`bench.remote_server`, :mod:`bench.vm_trace` and the pytest-benchmark
suite) and by the tests (``tests/servers.py``, ``tests/kernel/helpers.py``). A server is
known here only by its argv and what it says: ``listening on HOST:PORT`` on stdout once
it accepts connections, or the exit status and ``skipped: REASON`` line of
:func:`servers.backend.exit_unavailable` when this machine cannot run it. Every wait is
bounded: a server that hangs, crashes or never announces itself is a
:class:`StartFailure` with its reason and its stderr, never a hung caller.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

import psutil

from bench.metrics import tree
from servers.backend import unavailable_reason

READY_PREFIX = "listening on "
STOP_GRACE = 2.0  # seconds from SIGTERM to exit before the tree is killed
EXIT_WAIT = 5.0  # after the server closed its stdout (or was killed): until it is reaped
EXIT_CHECK_S = 0.05  # while waiting for the line: how often to look whether it exited
TAIL_BYTES = 4000


class StartFailure(Exception):
    """The server did not become ready. ``skipped``: it said this machine cannot run it
    (``reason`` is its reason); ``stderr`` is what it wrote there."""

    def __init__(self, reason: str, skipped: bool = False, stderr: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.skipped = skipped
        self.stderr = stderr


def pinned(argv: list[str], cpus: list[int] | None) -> list[str]:
    """``argv`` under ``taskset -c CPUS`` when CPUs are given (and taskset exists)."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    return argv


def file_tail(path: str, lines: int = 3) -> str:
    """The last ``lines`` lines of a log file's end, joined with `` | ``; "" if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - TAIL_BYTES, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def exit_text(code: int, before_stop: bool = False) -> str:
    """'exit status 1', 'killed by signal 9'; 'exited on its own (...)' before a stop."""
    what = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    return f"exited on its own ({what})" if before_stop else what


@dataclass
class ServerProcess:
    """A started server: its process, where it listens, the file its stderr goes to.

    ``descendants`` are its child processes as they were when it was last told to stop,
    so that what outlives it can be found (:meth:`leftovers`) and killed."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr_path: str
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def tree(self) -> list[psutil.Process]:
        """The server process and all its live descendants (empty once it is gone)."""
        return tree(self.proc.pid)

    def stderr_text(self) -> str:
        """Everything the server has written on stderr so far."""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr_tail(self, lines: int = 3) -> str:
        return file_tail(self.stderr_path, lines)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE) -> int | None:
        """Send ``sig`` and wait up to ``timeout`` s; the exit status, or None if it
        is still running. Its descendants are recorded first."""
        self.descendants = self.tree()[1:]
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self) -> list[psutil.Process]:
        """Recorded descendants that are still running (zombies count as gone)."""
        return [proc for proc in self.descendants if _running(proc)]

    def kill_all(self) -> int:
        """SIGKILL whatever is left of the tree (the server too, if it still runs) and
        wait for it to go (bounded); the number of descendants that were still running."""
        if self.proc.poll() is None:
            known = {proc.pid for proc in self.descendants}
            self.descendants += [p for p in self.tree()[1:] if p.pid not in known]
        left = self.leftovers()
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        deadline = time.monotonic() + EXIT_WAIT  # a killed orphan is reaped by init, not us
        while any(_running(proc) for proc in left) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                pass
        try:  # orphans of a server that died first: its session is its own process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        return len(left)

    def stop(self, grace: float = STOP_GRACE) -> str:
        """SIGTERM, ``grace`` s to exit, then kill what is left and remove the stderr
        file. "clean" (exit status 0, nothing left behind) or what went wrong."""
        code = self.proc.poll()
        if code is not None:
            self.descendants = self.tree()[1:]
            outcome = exit_text(code, before_stop=True)
        else:
            code = self.terminate(signal.SIGTERM, grace)
            if code is None:
                outcome = f"still running {grace:g} s after SIGTERM (killed)"
            else:
                outcome = "clean" if code == 0 else exit_text(code)
        left = self.kill_all()
        if left and outcome == "clean":
            outcome = f"{left} child process(es) left running after exit (killed)"
        self.close()
        return outcome

    def close(self) -> None:
        """Let go of its stdout pipe and its stderr file (once it has stopped)."""
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start(
    argv: list[str],
    *,
    ready_timeout: float,
    cpus: list[int] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    log_dir: str | None = None,
    name: str = "server",
) -> ServerProcess:
    """Start ``argv`` (pinned to ``cpus``) in a session of its own and wait up to
    ``ready_timeout`` s for ``listening on HOST:PORT``; :class:`StartFailure` otherwise.

    Its stderr goes to a file in ``log_dir`` (default: the temporary directory) named
    after ``name``; a wildcard address announced is given as 127.0.0.1."""
    err_fd, err_path = tempfile.mkstemp(prefix=f"tcpzoo-{name}-", suffix=".err", dir=log_dir)
    try:
        proc = subprocess.Popen(
            pinned(argv, cpus), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=err_fd, cwd=cwd, env=env, start_new_session=True,
        )
    finally:
        os.close(err_fd)
    server = ServerProcess(proc, "", 0, err_path)
    line, closed = _first_line(proc, time.monotonic() + ready_timeout)
    if line is not None:
        host, _, port = line.removeprefix(READY_PREFIX).rpartition(":")
        if line.startswith(READY_PREFIX) and port.isdigit():
            server.host = host.strip("[]")
            if server.host in ("0.0.0.0", "", "::"):
                server.host = "127.0.0.1"
            server.port = int(port)
            return server
        why = f"unexpected readiness line {line[:80]!r}"
    elif closed:
        try:
            code = proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            why = f"closed its stdout but still runs {EXIT_WAIT:g} s later"
        else:
            reason = unavailable_reason(code, server.stderr_text())
            if reason is not None:
                _give_up(server, reason, skipped=True)
            tail = server.stderr_tail(1) or "no message"
            why = f"exited before ready ({exit_text(code)}): {tail}"
    else:
        tail = server.stderr_tail(1)
        why = f"not ready within {ready_timeout:g} s" + (f": {tail}" if tail else "")
    _give_up(server, why)


def _give_up(server: ServerProcess, reason: str, skipped: bool = False) -> NoReturn:
    """Stop a server that did not start (briefly: it is not serving) and say why."""
    stderr = server.stderr_text()
    server.stop(grace=0.5)
    raise StartFailure(reason, skipped, stderr)


def _first_line(proc: subprocess.Popen[bytes], deadline: float) -> tuple[str | None, bool]:
    """(the first line the server writes on stdout, False), or (None, True) when it
    closes its stdout first, or (None, False) when the deadline passes first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, False
            if not sel.select(min(left, EXIT_CHECK_S)):
                if proc.poll() is not None:  # exited, a child of its still holds stdout
                    return None, True
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return None, True
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip(), False
