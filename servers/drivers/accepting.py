"""What every accept loop does when the process or system runs out of descriptors.

``accept`` failing with EMFILE, ENFILE, ENOBUFS or ENOMEM is an episode, not an
error per attempt: the loop logs one line when the episode begins, stops
accepting for a pause that doubles from 50 ms up to 0.5 s while the shortage
lasts, keeps serving the connections it has, and accepts again when a
descriptor frees up; clients that arrive meanwhile wait in the listen backlog.
The episode ends once accept has not failed for 1 s: while descriptors are
freed one by one, accept succeeds and fails by turns, and that is one episode.

:meth:`AcceptBackoff.accept_batch` is the accept loop of the drivers that accept
from a readable non-blocking listener (the readiness loop, the asyncio adapter):
a batch at a time, so one busy listener does not starve the connections.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable

OUT_OF_FDS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 0.5
EPISODE_QUIET = 1.0
ACCEPT_BATCH = 64


class AcceptBackoff:
    """The state of one accept loop: in an episode or not, and the current pause."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_failure = -EPISODE_QUIET  # none yet
        self.pause = 0.0

    def failed(self, exc: OSError) -> float | None:
        """``accept`` raised ``exc``: return how long to stop accepting, or None when it
        is not a descriptor shortage (the caller handles or re-raises it)."""
        if exc.errno not in OUT_OF_FDS:
            return None
        now = self.clock()
        if now - self.last_failure < EPISODE_QUIET:
            self.pause = min(max(self.pause * 2, FIRST_PAUSE), LONGEST_PAUSE)
        else:
            self.pause = FIRST_PAUSE
            message = exc.strerror or os.strerror(exc.errno or 0)
            print(f"accept: {message}; accepting paused until descriptors free up "
                  f"(open connections are still served)", file=sys.stderr, flush=True)
        self.last_failure = now
        return self.pause

    def succeeded(self) -> None:
        """An accept worked: the next shortage starts with the shortest pause."""
        self.pause = 0.0

    def accept_batch(self, listener: socket.socket,
                     limit: int = ACCEPT_BATCH) -> tuple[list[socket.socket], float | None]:
        """Accept up to ``limit`` waiting connections from the non-blocking ``listener``.
        Returns them, and how long to stop accepting when accept ran out of
        descriptors (else None); a batch of ``limit`` may leave more waiting. Other
        errors propagate."""
        accepted: list[socket.socket] = []
        while len(accepted) < limit:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                pause = self.failed(exc)
                if pause is None:
                    raise
                return accepted, pause
            self.succeeded()
            accepted.append(sock)
        return accepted, None
