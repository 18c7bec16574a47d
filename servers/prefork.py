"""prefork: N worker processes accepting on one shared listening socket.

The launcher's supervisor (:mod:`servers.workers`, ``workers_mode = "shared"``)
opens the listener, forks the workers, replaces one that dies and stops them
all on SIGTERM. Inside each worker a small fixed thread pool serves the
connections it accepts (the Apache "worker" MPM shape), so one slow client
does not hold a whole process; clients beyond workers x threads x 2 wait in
the shared backlog.
"""

from __future__ import annotations

import argparse
import os
import socket

from servers.backend import Backend
from servers.cli import main
from servers.settings import Settings
from servers.stop import StopSignal
from servers.threadpool import add_pool_arguments, check_pool_options, serve_pool

_THREADS_PER_WORKER = 128


class Prefork(Backend):
    """Pre-forked workers on a shared listener, a thread pool in each."""

    name = "prefork"
    guestbook = True
    workers_mode = "shared"
    default_workers = os.cpu_count() or 1

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_pool_arguments(parser, _THREADS_PER_WORKER)

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        check_pool_options(options)

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        serve_pool(listener, settings, stop, options.threads, options.queue)


if __name__ == "__main__":
    main(Prefork())
