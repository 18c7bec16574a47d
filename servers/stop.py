"""Graceful stop: SIGINT and SIGTERM become a flag and a readable file descriptor.

Event loops watch :meth:`StopSignal.fileno`; threads call :meth:`StopSignal.wait`.
``signal.set_wakeup_fd`` points at the same pipe, so even a loop blocked in C
(libuv, io_uring) wakes when a signal arrives.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType


class StopSignal:
    """Set once, by a signal or by :meth:`set`; never cleared."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.since = 0.0  # time.monotonic() when set

    def install(self) -> StopSignal:
        """Route SIGINT and SIGTERM here (main thread only)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.set()

    def set(self) -> None:
        if self._event.is_set():
            return
        self.since = time.monotonic()
        self._event.set()
        try:
            os.write(self._write_fd, b"!")
        except BlockingIOError:
            pass
        for callback in self._callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when stop is set. It may run inside a signal handler on the
        main thread, so it must be short and take no lock the main thread may hold."""
        self._callbacks.append(callback)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def fileno(self) -> int:
        return self._read_fd
