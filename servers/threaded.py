"""threaded: a new thread for every connection, blocking I/O in each.

The GIL's switch interval grows with the number of connection threads (#10). A
thread waiting for the GIL wakes every switch interval to ask for it (CPython's
``take_gil``: a timed wait on one condition variable), so N waiting threads make
N / interval futex wake-ups a second. When 10,000 clients disconnect at once,
10,000 threads wake and want the GIL together: at the default 5 ms that is two
million wake-ups a second on one futex; the CPUs spin in the kernel on its
hash-bucket lock (perf: 59 % futex_wake, 40 % the queued spinlock; 9,500 threads
runnable), the thread holding the GIL hardly runs, about 1,000 threads leave in
30 s, and a new client waited 80 s for its answer (2 cores). With the interval at
threads / 2,000 s, between the default 5 ms (10 threads or fewer) and 1 s (2,000
or more), and the blocking driver closing at once after the peer's FIN (no drain:
two GIL round trips fewer per leaving thread), the crowd leaves within about a
second and the new client is answered in 0.06 to 1.5 s (five runs). Each half
alone is not enough: the interval alone, 1 to 2.3 s; the driver alone, no answer
in 120 s. A longer interval is worse again (5 s: 15 s), as a thread that loses the
race for a released GIL sleeps a whole interval. Threads still give the GIL up at
every blocking call; only one computing longer than the interval keeps the others
waiting longer.
"""

from __future__ import annotations

import argparse
import socket
import sys
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
# The switch interval: one second per this many threads, at most 1 s (module docstring).
_THREADS_PER_SECOND = 2_000
_LONGEST_SWITCH_INTERVAL = 1.0


def fit_switch_interval(threads: int, shortest: float) -> None:
    """Set the GIL switch interval for ``threads`` threads (see the module docstring)."""
    sys.setswitchinterval(min(_LONGEST_SWITCH_INTERVAL,
                              max(shortest, threads / _THREADS_PER_SECOND)))


class Threaded(Backend):
    """A thread per connection: simple, and limited by threads and memory."""

    name = "threaded"
    guestbook = True
    workers_mode = None

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        new_session = session_factory(settings)
        conns = ConnectionSet()
        threads: set[threading.Thread] = set()
        threading.stack_size(_THREAD_STACK)
        shortest = sys.getswitchinterval()

        def run(sock: socket.socket) -> None:
            try:
                serve_connection(sock, new_session, settings)
            finally:
                conns.discard(sock)
                threads.discard(threading.current_thread())
                fit_switch_interval(len(threads), shortest)

        def handle(sock: socket.socket) -> None:
            conns.add(sock)
            thread = threading.Thread(target=run, args=(sock,), daemon=True)
            threads.add(thread)
            fit_switch_interval(len(threads), shortest)
            thread.start()

        accept_until_stopped(listener, stop, handle)
        listener.close()
        conns.stop_all()
        deadline = time.monotonic() + settings.shutdown_grace
        for thread in list(threads):
            thread.join(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    main(Threaded())
