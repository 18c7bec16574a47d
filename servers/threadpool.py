"""threadpool: a fixed pool of threads fed accepted connections through a bounded queue.

The main thread accepts and hands each connection to the queue; N threads take
them one at a time and run the blocking driver. When every thread is busy and
the queue is full, the acceptor blocks on the queue and stops accepting, so
further clients wait in the kernel's listen backlog instead of being dropped.
The pool is :mod:`servers.drivers.thread_pool` (prefork runs one per worker).
"""

from __future__ import annotations

from servers.cli import main
from servers.drivers.thread_pool import PoolModel


class ThreadPool(PoolModel):
    """A fixed pool of threads and a bounded queue; a full pool leaves clients in the backlog."""

    name = "threadpool"
    workers_mode = None
    default_threads = 256


if __name__ == "__main__":
    main(ThreadPool())
