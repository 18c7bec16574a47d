"""threadpool: a fixed pool of threads fed accepted connections through a bounded queue.

The main thread accepts and hands each connection to the queue; N threads take
them one at a time and run the blocking driver. When every thread is busy and
the queue is full, the acceptor blocks on the queue and stops accepting, so
further clients wait in the kernel's listen backlog instead of being dropped.
"""

from __future__ import annotations

import argparse
import queue
import socket
import threading
import time

from servers.backend import Backend, UsageError
from servers.cli import main
from servers.core import session_factory
from servers.drivers.blocking import ConnectionSet, accept_until_stopped, serve_connection
from servers.drivers.blocking_backend import BlockingBackend
from servers.settings import Settings
from servers.stop import StopSignal

_THREAD_STACK = 256 * 1024
DEFAULT_THREADS = 256
# How often a blocked acceptor looks at the stop flag while the queue is full.
_PUT_RETRY = 0.1


def add_pool_arguments(parser: argparse.ArgumentParser, threads: int) -> None:
    """The pool's flags, shared with prefork (whose workers each run a pool)."""
    parser.add_argument("--threads", type=int, default=threads,
                        help="threads in the pool (default: %(default)s)")
    parser.add_argument("--queue", type=int, default=None,
                        help="accepted connections waiting for a thread (default: threads)")


def serve_pool(listener: socket.socket, settings: Settings, stop: StopSignal,
               threads: int, queue_size: int) -> None:
    """Accept on ``listener`` and serve with ``threads`` threads until stopped."""
    new_session = session_factory(settings)
    conns = ConnectionSet()
    stop.add_callback(conns.stop_all)
    pending: queue.Queue[socket.socket | None] = queue.Queue(maxsize=queue_size)

    def work() -> None:
        backend = BlockingBackend.for_settings(settings)  # this thread's, for its life
        try:
            while True:
                sock = pending.get()
                if sock is None:
                    return
                conns.add(sock)
                try:
                    serve_connection(sock, new_session, settings, stop=stop, backend=backend)
                finally:
                    conns.discard(sock)
        finally:
            if backend is not None:
                backend.close()

    threading.stack_size(_THREAD_STACK)
    pool = [threading.Thread(target=work, name=f"pool-{i}", daemon=True)
            for i in range(threads)]
    for thread in pool:
        thread.start()

    def hand_over(sock: socket.socket) -> None:
        # Blocking here is the point: while the queue is full nothing is accepted.
        while not stop.is_set():
            try:
                pending.put(sock, timeout=_PUT_RETRY)
                return
            except queue.Full:
                continue
        sock.close()

    accept_until_stopped(listener, stop, hand_over)
    listener.close()
    conns.stop_all()
    deadline = time.monotonic() + settings.shutdown_grace
    # Connections still queued are served (they see end-of-file at once), then the sentinels.
    for _ in pool:
        while True:
            try:
                pending.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
    for thread in pool:
        thread.join(max(0.0, deadline - time.monotonic()))


class ThreadPool(Backend):
    """A fixed pool of threads and a bounded queue; a full pool leaves clients in the backlog."""

    name = "threadpool"
    guestbook = True
    workers_mode = None

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_pool_arguments(parser, DEFAULT_THREADS)

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        check_pool_options(options)

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        serve_pool(listener, settings, stop, options.threads, options.queue)


def check_pool_options(options: argparse.Namespace) -> None:
    """Reject a pool without threads; default the queue to the pool size."""
    if options.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {options.threads}")
    if options.queue is None:
        options.queue = options.threads
    if options.queue < 1:
        raise UsageError(f"--queue must be at least 1, got {options.queue}")


if __name__ == "__main__":
    main(ThreadPool())
