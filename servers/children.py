"""The child processes a server forked: reaped without blocking, stopped within a grace.

Shared by the ``--workers N`` supervisor (:mod:`servers.workers`) and by ``forking``
(a child per connection, reaped from its SIGCHLD handler).
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

_POLL = 0.01  # while stopping, how often exited children are collected


class Children:
    """The pids of live children. Not thread-safe; :meth:`reap` may run as a signal
    handler (it only takes the set's atomic add and discard for granted)."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def reap(self, signum: int = 0, frame: FrameType | None = None) -> int:
        """Collect every exited child without blocking; return how many exited. The
        arguments let it serve as a SIGCHLD handler."""
        gone = 0
        while self.pids:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none left: whatever the set holds is stale
                self.pids.clear()
                break
            if pid == 0:
                break
            self.pids.discard(pid)
            gone += 1
        return gone

    def signal_all(self, signum: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float) -> None:
        """SIGTERM every child, give them ``grace`` seconds to exit, SIGKILL the rest,
        and wait for all of them."""
        self.reap()
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids and time.monotonic() < deadline:
            time.sleep(_POLL)
            self.reap()
        self.signal_all(signal.SIGKILL)
        while self.pids:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                self.pids.clear()
                break
            self.pids.discard(pid)
