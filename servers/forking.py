"""forking: a child process per connection, the blocking driver in the child.

The parent only accepts and forks. Children are reaped from a SIGCHLD handler
(non-blocking ``waitpid`` until none is left), so none lingers as a zombie; a
child that crashes takes only its own connection with it. On a graceful stop
the parent stops accepting and sends every child SIGTERM, which shuts down the
read side of its connection: an idle child sees end-of-file and exits, a busy
one finishes its response first; any child left after the grace is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from types import FrameType

from servers.backend import Backend
from servers.cli import main
from servers.core import session_factory
from servers.drivers.blocking import accept_until_stopped, serve_connection
from servers.settings import Settings
from servers.stop import StopSignal

_SIGCHLD = {signal.SIGCHLD}


class _Children:
    """Live child pids, updated by the SIGCHLD handler."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def reap(self, signum: int = 0, frame: FrameType | None = None) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.pids.discard(pid)

    def signal_all(self, signum: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _run_child(sock: socket.socket, listener: socket.socket, settings: Settings,
               new_session: object) -> None:
    """The body of a connection's child: serve it, then exit without unwinding."""
    code = 0
    try:
        listener.close()
        signal.set_wakeup_fd(-1)  # the parent's stop pipe is not ours to write
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

        def on_stop(signum: int, frame: FrameType | None) -> None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD)
        serve_connection(sock, new_session, settings)  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 - a child reports and exits, never unwinds
        print(f"forking child {os.getpid()}: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    finally:
        os._exit(code)


class Forking(Backend):
    """fork() per connection: full isolation, a process creation per client."""

    name = "forking"
    guestbook = True
    workers_mode = None

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        new_session = session_factory(settings)
        children = _Children()
        signal.signal(signal.SIGCHLD, children.reap)

        def handle(sock: socket.socket) -> None:
            # SIGCHLD stays blocked until the pid is recorded, so a child that exits at
            # once is never reaped before it is known (and then waited for forever).
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGCHLD)
            try:
                pid = os.fork()
                if pid == 0:
                    _run_child(sock, listener, settings, new_session)
                children.pids.add(pid)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD)
                sock.close()

        accept_until_stopped(listener, stop, handle)
        listener.close()
        children.reap()
        children.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + settings.shutdown_grace
        while children.pids and time.monotonic() < deadline:
            children.reap()
            time.sleep(0.01)
        children.signal_all(signal.SIGKILL)
        while children.pids:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            children.pids.discard(pid)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


if __name__ == "__main__":
    main(Forking())
