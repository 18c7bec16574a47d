"""What a server costs while it serves: CPU, memory, context switches, system calls.

Everything here looks at the server's whole process tree (the launched process
and every descendant), because a forking or prefork server does its work in
children:

* :class:`TreeSampler` snapshots CPU seconds (user + system, plus the times of
  children already reaped, so a forking server's short-lived children are
  counted once reaped) and context switches (every thread of every process:
  threads alive at both ends of the window) at the start and end of the
  measured window, and samples the tree's resident memory every 50 ms in a
  background thread to find its peak. RSS sums count pages shared after a
  fork once per process, so the proportional set size (PSS) at the end of the
  window is recorded too. Given ``subtract_pids`` (the load generator and the
  harness, in the QEMU guest), it also takes what every CPU spent in the window
  (``/proc/stat``: user, system, irq, softirq) less those processes' own CPU: the
  server's whole cost, kworkers and softirq included, which a kernel server only
  has.
* :class:`SyscallCounter` runs ``perf stat -e raw_syscalls:sys_enter -p PIDS``
  over the same window, where perf exists and may attach (detected once by
  :func:`perf_available`); otherwise system calls are simply not reported.

Per-request figures are computed by the runner from the window's length and
the load generator's request rate, so the window need not line up exactly
with the load generator's own measured interval.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

PERF_EVENT = "raw_syscalls:sys_enter"


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all of its live descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cores_busy(cpus: list[int] | None) -> float:
    """CPU seconds spent by anything (not idle, not iowait) on ``cpus`` since boot."""
    if not cpus:
        return 0.0
    per_cpu = psutil.cpu_times(percpu=True)
    busy = 0.0
    for cpu in cpus:
        if cpu < len(per_cpu):
            t = per_cpu[cpu]
            busy += sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return busy


def pids_cpu(pids: tuple[int, ...]) -> float:
    """User + system CPU seconds of the processes ``pids`` (all their threads)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def established(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (server side).

    Read from /proc/net/tcp{,6}, so it sees connections still in the accept queue
    and those of in-kernel servers, which no process owns.
    """
    wanted = f":{port:04X}"
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == "01" and fields[1].endswith(wanted):
                        count += 1
        except OSError:
            continue
    return count


@dataclass
class TreeSnapshot:
    """Cumulative counters of a process tree at one instant."""

    at: float
    cpu_s: float
    threads: dict[int, tuple[int, int]]  # tid -> (voluntary, involuntary) switches
    rss: int
    pids: tuple[int, ...]
    cores_busy: float = 0.0
    other_busy: float = 0.0
    whole: float = 0.0  # every CPU's busy time less the subtracted processes' CPU


def thread_ctx_switches(pid: int) -> dict[int, tuple[int, int]]:
    """{tid: (voluntary, involuntary)} context switches of every live thread of ``pid``.

    ``/proc/PID/status`` counts the main thread only, so a thread-per-connection
    server would look free of context switches; every ``task/TID/status`` is read.
    """
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        vol = invol = 0
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith(b"nonvoluntary_ctxt_switches:"):
                        invol = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = (vol, invol)
    return out


def tree_pss(pid: int) -> int | None:
    """Proportional set size of the tree (shared pages split between sharers), or None."""
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
        except (psutil.Error, AttributeError):
            return None
    return total


def snapshot(pid: int) -> TreeSnapshot:
    """Sum the tree's CPU times (reaped children included), context switches and RSS."""
    cpu = 0.0
    rss = 0
    threads: dict[int, tuple[int, int]] = {}
    pids = []
    for proc in tree(pid):
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                mem = proc.memory_info()
        except psutil.Error:
            continue
        threads.update(thread_ctx_switches(proc.pid))
        cpu += times.user + times.system + times.children_user + times.children_system
        rss += mem.rss
        pids.append(proc.pid)
    return TreeSnapshot(time.monotonic(), cpu, threads, rss, tuple(pids))


def switches_between(first: TreeSnapshot, last: TreeSnapshot) -> tuple[int, int]:
    """Context switches in the window: threads born in it count from zero; threads that
    died in it are lost (their counts vanish with them)."""
    vol = invol = 0
    for tid, (v, i) in last.threads.items():
        v0, i0 = first.threads.get(tid, (0, 0))
        if v >= v0 and i >= i0:
            vol += v - v0
            invol += i - i0
        else:  # a recycled thread id: a new thread
            vol += v
            invol += i
    return vol, invol


@dataclass
class TreeUsage:
    """The difference between two snapshots, plus the peak RSS seen in between."""

    window_s: float
    cpu_s: float
    voluntary: int
    involuntary: int
    peak_rss: int
    pss: int | None = None
    cores_busy_s: float | None = None  # everything that ran on the server's cores
    other_busy_s: float | None = None  # everything that ran on the other (client) cores
    whole_cpu_s: float | None = None  # every CPU, less the subtracted pids (see module doc)


class TreeSampler:
    """Measure a process tree over a window: ``start()``, then ``stop()`` -> TreeUsage."""

    def __init__(self, pid: int, interval: float = 0.05, cpus: list[int] | None = None,
                 other_cpus: list[int] | None = None,
                 subtract_pids: tuple[int, ...] | None = None) -> None:
        self.pid = pid
        self.subtract_pids = subtract_pids
        self.cpus = cpus
        self.other_cpus = other_cpus
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first: TreeSnapshot | None = None

    def start(self) -> TreeSnapshot:
        """Take the opening snapshot and start sampling memory."""
        self._first = snapshot(self.pid)
        self._first.cores_busy = cores_busy(self.cpus)
        self._first.other_busy = cores_busy(self.other_cpus)
        self._first.whole = self._whole()
        self._peak = self._first.rss
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self._first

    def _whole(self) -> float:
        if self.subtract_pids is None:
            return 0.0
        return cores_busy(list(range(psutil.cpu_count() or 1))) - pids_cpu(self.subtract_pids)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = 0
            for proc in tree(self.pid):
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            self._peak = max(self._peak, rss)

    def stop(self) -> TreeUsage:
        """Take the closing snapshot and return the usage over the window."""
        last = snapshot(self.pid)
        last.cores_busy = cores_busy(self.cpus)
        last.other_busy = cores_busy(self.other_cpus)
        last.whole = self._whole()
        self._stop.set()
        pss = tree_pss(self.pid)
        if self._thread is not None:
            self._thread.join(2.0)
        first = self._first or last
        vol, invol = switches_between(first, last)
        return TreeUsage(
            window_s=max(last.at - first.at, 1e-9),
            cpu_s=max(last.cpu_s - first.cpu_s, 0.0),
            voluntary=vol,
            involuntary=invol,
            peak_rss=max(self._peak, last.rss),
            pss=pss,
            cores_busy_s=(last.cores_busy - first.cores_busy) if self.cpus else None,
            other_busy_s=(last.other_busy - first.other_busy) if self.other_cpus else None,
            whole_cpu_s=(max(last.whole - first.whole, 0.0)
                         if self.subtract_pids is not None else None),
        )


@functools.cache
def perf_available() -> str | None:
    """None when ``perf stat -e raw_syscalls:sys_enter`` works here, else why not."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf not installed"
    try:
        done = subprocess.run(
            [perf, "stat", "-x,", "-e", PERF_EVENT, "--", "true"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"perf failed: {exc}"
    if done.returncode != 0 or _parse_perf(done.stderr) is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"perf cannot count {PERF_EVENT}: {tail[:120]}"
    return None


def _parse_perf(text: str) -> int | None:
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and PERF_EVENT in fields[2]:
            if fields[0].strip() == "<not counted>":  # the tasks never ran in the window
                return 0
            try:
                return int(float(fields[0]))
            except ValueError:
                return None
    return None


class SyscallCounter:
    """Count the system calls of a set of processes (all their threads) via perf.

    ``perf stat -p PIDS`` runs until SIGINT; the rate is its count over the time
    perf itself reports as elapsed, which starts once the counters are enabled, so
    the seconds perf takes to attach to many threads on a busy machine do not
    dilute it.
    """

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self._proc: subprocess.Popen[str] | None = None
        self._started = 0.0

    def start(self) -> bool:
        """Attach perf; False when perf is unavailable or there is nothing to attach to."""
        if perf_available() is not None or not self.pids:
            return False
        try:
            self._proc = subprocess.Popen(
                ["perf", "stat", "--no-big-num", "-e", PERF_EVENT,
                 "-p", ",".join(map(str, self.pids))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
        except OSError:
            self._proc = None
            return False
        self._started = time.monotonic()
        return True

    def stop(self) -> tuple[int, float] | None:
        """Detach perf; (system calls, seconds counted) or None if nothing was counted."""
        if self._proc is None:
            return None
        clock = time.monotonic() - self._started
        try:
            self._proc.send_signal(signal.SIGINT)
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return None
        count = None
        elapsed = None
        for line in err.splitlines():
            if PERF_EVENT in line:
                head = line.split()[0] if line.split() else ""
                count = int(head) if head.isdigit() else None
            match = re.search(r"([0-9.]+) seconds time elapsed", line)
            if match:
                elapsed = float(match.group(1))
        if count is None:
            return None
        # perf 6.1 (Debian 12's, as in the guest) reports ~0.1 s after SIGINT whatever
        # the real span: trust perf's figure only when it is plausible
        if elapsed is None or not 0.5 * clock <= elapsed <= clock + 0.5:
            elapsed = clock
        return count, elapsed
