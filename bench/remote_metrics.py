"""The server's measurement window where the server runs: ``python -m bench.remote_metrics``.

The harness runs this module over ``ssh`` on the server host (or calls
:func:`window_at` itself when the server is local but the load comes from other
hosts). It measures the server's process tree with the same classes as a local
run (:class:`bench.metrics.TreeSampler`, :class:`bench.metrics.SyscallCounter`),
so the record is the same; only the trigger differs: the load generators start
their clocks at an agreed CLOCK_REALTIME instant, so the window opens at an
instant too (warm-up over), instead of after the first connection as locally.

It prints one JSON object: ``{"usage": {TreeUsage fields}, "syscalls": [count,
seconds] or null, "died": bool}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import psutil

from bench import metrics
from servers.argtypes import non_negative_float, positive_float, positive_int

MAX_WAIT_S = 600.0  # the furthest opening instant accepted


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def window_at(
    pid: int, opens_at: float, span: float, use_perf: bool,
    cpus: list[int] | None = None, other_cpus: list[int] | None = None,
) -> tuple[metrics.TreeUsage, tuple[int, float] | None, bool]:
    """Sleep until ``opens_at`` (seconds since the epoch), then measure the tree of
    ``pid`` for ``span`` s or until it dies; (usage, (syscalls, s) or None, died)."""
    wait = opens_at - time.time()
    if wait > MAX_WAIT_S:
        raise ValueError(f"the window opens in {wait:.0f} s: more than {MAX_WAIT_S:g} s away")
    if wait > 0:
        time.sleep(wait)
    sampler = metrics.TreeSampler(pid, cpus=cpus, other_cpus=other_cpus)
    opened = sampler.start()
    counter = metrics.SyscallCounter(opened.pids) if use_perf else None
    died = False
    try:
        if counter:
            counter.start()
        deadline = time.monotonic() + span
        while time.monotonic() < deadline:
            if not _alive(pid):
                died = True
                break
            time.sleep(0.02)
    finally:
        syscalls = counter.stop() if counter else None
        usage = sampler.stop()
    return usage, syscalls, died


def to_json(usage: metrics.TreeUsage, syscalls: tuple[int, float] | None, died: bool) -> str:
    return json.dumps({"usage": dataclasses.asdict(usage),
                       "syscalls": list(syscalls) if syscalls else None, "died": died})


def from_json(text: str) -> tuple[metrics.TreeUsage, tuple[int, float] | None, bool]:
    """The inverse of :func:`to_json`; ValueError when the text is not such a record."""
    try:
        data: dict[str, Any] = json.loads(text)
        usage = metrics.TreeUsage(**data["usage"])
        calls = data["syscalls"]
        return usage, (int(calls[0]), float(calls[1])) if calls else None, bool(data["died"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"not a window record: {text[-200:]!r} ({exc})") from None


def _cpu_list(text: str) -> list[int]:
    try:
        cpus = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0,1, got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 0,1, got {text!r}")
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote_metrics",
                                     description="Measure a server's process tree over a "
                                                 "window opening at an instant; one JSON line.")
    parser.add_argument("--pid", type=positive_int, required=True)
    parser.add_argument("--opens-at", type=positive_float, required=True, metavar="EPOCH_S")
    parser.add_argument("--span", type=non_negative_float, required=True)
    parser.add_argument("--perf", action="store_true", help="count system calls (if perf can)")
    parser.add_argument("--cpus", type=_cpu_list, default=None, help="the server's cores")
    parser.add_argument("--other-cpus", type=_cpu_list, default=None,
                        help="the load generator's cores (same machine)")
    options = parser.parse_args(argv)
    use_perf = options.perf and metrics.perf_available() is None
    try:
        result = window_at(options.pid, options.opens_at, options.span, use_perf,
                           options.cpus, options.other_cpus)
    except ValueError as exc:
        print(f"bench.remote_metrics: {exc}", file=sys.stderr)
        return 2
    print(to_json(*result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
