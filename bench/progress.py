"""A progress line on stderr: what runs now, how far along, and the time left.

On a terminal the line is rewritten in place; otherwise (CI logs, pipes) one
line is printed per run. The time left is the number of runs still to do times
the mean wall time per planned second of load seen so far, so it adapts to the
real overhead (server start, connection set-up, stop) on this machine.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '1 h 02 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Track ``total`` runs whose planned cost is ``planned_s`` seconds each (estimate)."""

    def __init__(self, total: int, estimate_per_run: float, stream: TextIO | None = None,
                 enabled: bool = True, lines: bool = False) -> None:
        self.total = total
        self.done = 0
        self.estimate_per_run = estimate_per_run
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.monotonic()
        # ``lines``: one line per run even on a terminal (a guest's serial console)
        self._tty = not lines and bool(getattr(self.stream, "isatty", lambda: False)())
        self._spent = 0.0  # wall seconds of runs that really ran
        self._ran = 0
        self._width = 0

    def remaining_s(self) -> float:
        per_run = self._spent / self._ran if self._ran else self.estimate_per_run
        return per_run * (self.total - self.done)

    def start(self, label: str) -> None:
        """Announce the run about to start."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        line = (f"[{self.done + 1:>{len(str(self.total))}}/{self.total}] {label}  "
                f"elapsed {fmt_duration(elapsed)}, left ~{fmt_duration(self.remaining_s())}")
        if self._tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, wall_s: float, ran: bool = True) -> None:
        """Count one run as done; ``ran`` False for runs skipped without cost."""
        self.done += 1
        if ran:
            self._spent += wall_s
            self._ran += 1

    def note(self, text: str) -> None:
        """A line that stays (a failure, a skip)."""
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
