"""forking: a child process per connection, the blocking driver in the child.

The parent only accepts and forks. Children are reaped from a SIGCHLD handler
(:class:`servers.children.Children`, the supervisor's), so none lingers as a
zombie; a child that crashes takes only its own connection with it. On a
graceful stop the parent stops accepting and sends every child SIGTERM, which
shuts down the read side of its connection: an idle child sees end-of-file and
exits, a busy one finishes its response first; any child left after the grace
is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Callable

from servers.children import Children
from servers.cli import main
from servers.core import Session, session_factory
from servers.drivers.blocking_runner import BlockingModel, BlockingRunner, accept_until_stopped
from servers.settings import Settings
from servers.stop import StopSignal

_SIGCHLD = {signal.SIGCHLD}


def _run_child(sock: socket.socket, listener: socket.socket, settings: Settings,
               new_session: Callable[[float], Session]) -> None:
    """The body of a connection's child: serve it, then exit without unwinding."""
    code = 0
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The child's own stop (the parent's pipe is not its to write): SIGTERM or
        # SIGINT shuts down the read side of its connection.
        stop = StopSignal().install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD)
        runner = BlockingRunner(settings, stop, sends_heed_stop=False, new_session=new_session)
        runner.serve(sock)
    except BaseException as exc:  # noqa: BLE001 - a child reports and exits, never unwinds
        print(f"forking child {os.getpid()}: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    finally:
        os._exit(code)


class Forking(BlockingModel):
    """fork() per connection: full isolation, a process creation per client."""

    name = "forking"
    workers_mode = None

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        new_session = session_factory(settings)  # made once, inherited by every child
        children = Children()
        signal.signal(signal.SIGCHLD, children.reap)

        def handle(sock: socket.socket) -> None:
            # SIGCHLD stays blocked until the pid is recorded, so a child that exits at
            # once is never reaped before it is known (and then waited for forever).
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGCHLD)
            try:
                pid = os.fork()
                if pid == 0:
                    _run_child(sock, listener, settings, new_session)
                children.add(pid)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD)
                sock.close()

        accept_until_stopped(listener, stop, handle)
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # stop() collects them from here on
        children.stop(settings.shutdown_grace)


if __name__ == "__main__":
    main(Forking())
