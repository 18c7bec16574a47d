"""A fixed pool of threads fed accepted connections through a bounded queue.

The accepting thread hands each connection to the queue; the pool's threads take
them one at a time and run them through the blocking driver, each thread with its
own Redis connection for its whole life. When every thread is busy and the queue
is full, the acceptor blocks on the queue and stops accepting, so further clients
wait in the kernel's listen backlog instead of being dropped. Used by
``threadpool`` (one pool) and ``prefork`` (a pool in each worker process).
"""

from __future__ import annotations

import argparse
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from servers.backend import UsageError
from servers.drivers.blocking_runner import BlockingModel, BlockingRunner, accept_until_stopped
from servers.settings import Settings
from servers.stop import StopSignal

_THREAD_STACK = 256 * 1024
# How often a blocked acceptor looks at the stop flag while the queue is full.
_PUT_RETRY = 0.1


@dataclass(frozen=True)
class PoolSize:
    """Threads in the pool, and accepted connections that may wait for one."""

    threads: int
    queue: int


def add_pool_arguments(parser: argparse.ArgumentParser, threads: int) -> None:
    """The pool's flags, ``threads`` being the model's default pool size."""
    parser.add_argument("--threads", type=int, default=threads,
                        help="threads in the pool (default: %(default)s)")
    parser.add_argument("--queue", type=int, default=None,
                        help="accepted connections waiting for a thread (default: threads)")


def pool_size(options: argparse.Namespace) -> PoolSize:
    """The pool the flags ask for (the queue defaults to the thread count); a
    :class:`UsageError` for a pool without threads or queue."""
    if options.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {options.threads}")
    queue_size = options.threads if options.queue is None else options.queue
    if queue_size < 1:
        raise UsageError(f"--queue must be at least 1, got {queue_size}")
    return PoolSize(options.threads, queue_size)


def serve_pool(listener: socket.socket, settings: Settings, stop: StopSignal,
               size: PoolSize) -> None:
    """Accept on ``listener`` and serve with the pool until stopped."""
    runner = BlockingRunner(settings, stop, sends_heed_stop=True)
    pending: queue.Queue[socket.socket | None] = queue.Queue(maxsize=size.queue)

    def work() -> None:
        with runner.worker_backend() as backend:
            while (sock := pending.get()) is not None:
                runner.serve(sock, backend)

    threading.stack_size(_THREAD_STACK)
    pool = [threading.Thread(target=work, name=f"pool-{i}", daemon=True)
            for i in range(size.threads)]
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


class PoolModel(BlockingModel):
    """A model whose every serving process runs one pool: ``--threads``, ``--queue``."""

    default_threads: ClassVar[int]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_pool_arguments(parser, self.default_threads)

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        pool_size(options)

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        serve_pool(listener, settings, stop, pool_size(options))
