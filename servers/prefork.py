"""prefork: N worker processes accepting on one shared listening socket.

The launcher's supervisor (:mod:`servers.workers`, ``workers_mode = "shared"``)
opens the listener, forks the workers, replaces one that dies and stops them
all on SIGTERM. Inside each worker a small fixed thread pool
(:mod:`servers.drivers.thread_pool`) serves the connections it accepts (the
Apache "worker" MPM shape), so one slow client does not hold a whole process;
clients beyond workers x threads x 2 wait in the shared backlog.
"""

from __future__ import annotations

import os

from servers.cli import main
from servers.drivers.thread_pool import PoolModel


class Prefork(PoolModel):
    """Pre-forked workers on a shared listener, a thread pool in each."""

    name = "prefork"
    workers_mode = "shared"
    default_workers = os.cpu_count() or 1
    default_threads = 128


if __name__ == "__main__":
    main(Prefork())
