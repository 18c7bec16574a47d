"""threaded: a new thread for every connection, blocking I/O in each."""

from __future__ import annotations

import argparse
import socket
import threading
import time

from servers.backend import Backend
from servers.cli import main
from servers.core import session_factory
from servers.drivers.blocking import ConnectionSet, accept_until_stopped, serve_connection
from servers.settings import Settings
from servers.stop import StopSignal

# Thousands of threads: a small stack keeps the address space reasonable.
_THREAD_STACK = 256 * 1024


class Threaded(Backend):
    """A thread per connection: simple, and limited by threads and memory."""

    name = "threaded"
    workers_mode = None

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        new_session = session_factory(settings)
        conns = ConnectionSet()
        threads: set[threading.Thread] = set()
        threading.stack_size(_THREAD_STACK)

        def run(sock: socket.socket) -> None:
            try:
                serve_connection(sock, new_session, settings)
            finally:
                conns.discard(sock)
                threads.discard(threading.current_thread())

        def handle(sock: socket.socket) -> None:
            conns.add(sock)
            thread = threading.Thread(target=run, args=(sock,), daemon=True)
            threads.add(thread)
            thread.start()

        accept_until_stopped(listener, stop, handle)
        listener.close()
        conns.stop_all()
        deadline = time.monotonic() + settings.shutdown_grace
        for thread in list(threads):
            thread.join(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    main(Threaded())
