"""threaded: a new thread for every connection, blocking I/O in each.

Mass disconnect (#10). When 10,000 clients leave at once, 10,000 threads wake
from their reads together and each needs the GIL to finish. A thread waiting for
the GIL wakes every switch interval to ask for it (CPython's ``take_gil``: a
timed wait on one condition variable under one mutex), so N waiting threads make
N / interval futex wake-ups a second: at the default 5 ms, two million, and
9,500 threads were runnable on 2 cores, 99 % of the CPU spent in the kernel's
futex code (perf: futex_wake 59 %, the futex hash-bucket spinlock 40 %), about
1,000 threads left in 30 s, and a new client waited 80 s for its answer. So:

- the switch interval grows with the threads: threads / 2,000 s, from the
  default 5 ms (10 threads or fewer) up to 1 s (2,000 or more). Longer is worse
  again (5 s: 6.6 s and 15 s seen), as a thread that loses the race for a
  released GIL sleeps a whole interval;
- a thread is started with ``_thread.start_new_thread`` and a lock it releases
  when done, not ``threading.Thread``: no start-up handshake in which the
  accepting thread waits for the new one to get the GIL, no global registry lock
  taken by every thread that ends;
- the blocking driver closes at once after the peer's FIN instead of draining it.

Then the crowd leaves in about a second and the new client is answered in 0.02
to 0.9 s in most runs (36 of 39 on a busy 2-core machine). That is the model's
limit, not a guarantee: when the threads wake faster than the GIL can be handed
from one to the next, thousands stay runnable on 2 cores, whoever holds the GIL
or its mutex is preempted among them, and the handoffs collapse into a convoy
for several seconds (7.8 s once, over 8 s twice) before the crowd drains.
Threads still give the GIL up at every blocking call; only one computing longer
than the interval keeps the others waiting longer.
"""

from __future__ import annotations

import _thread
import argparse
import socket
import sys
import threading
import time

from servers.cli import main
from servers.drivers.blocking_runner import BlockingModel, BlockingRunner, accept_until_stopped
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


class Threaded(BlockingModel):
    """A thread per connection: simple, and limited by threads and memory."""

    name = "threaded"
    workers_mode = None

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        # Each thread opens its own Redis connection if its client calls one; a stop
        # leaves the threads that do not finish within the grace to the process's exit.
        runner = BlockingRunner(settings, stop, sends_heed_stop=False)
        running: set[_thread.LockType] = set()  # one lock per thread, held while it runs
        threading.stack_size(_THREAD_STACK)
        shortest = sys.getswitchinterval()

        def run(sock: socket.socket, done: _thread.LockType) -> None:
            try:
                runner.serve(sock)
            finally:
                running.discard(done)
                fit_switch_interval(len(running), shortest)
                done.release()

        def handle(sock: socket.socket) -> None:
            done = _thread.allocate_lock()
            done.acquire()
            running.add(done)
            fit_switch_interval(len(running), shortest)
            _thread.start_new_thread(run, (sock, done))  # not waited for at exit, as daemons

        accept_until_stopped(listener, stop, handle)
        listener.close()
        deadline = time.monotonic() + settings.shutdown_grace
        for done in list(running):
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break


if __name__ == "__main__":
    main(Threaded())
