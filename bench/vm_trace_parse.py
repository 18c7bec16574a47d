"""Read tracefs output into the figures of the tracing view (``python -m bench --vm --trace``).

Pure functions over the text of ``/sys/kernel/tracing/trace``: no tracefs access here
(that is :mod:`bench.vm_trace`), so each reading can be checked on any machine. Times
are in microseconds; per-request figures divide by the requests served while tracing
was on.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# "  comm-pid  [cpu] flags  12.345678: event: fields"; a comm may hold '-' and spaces.
EVENT_RE = re.compile(r"^\s*(.+)-(\d+)\s+\[(\d+)\]\s+(?:\S+\s+)?(\d+\.\d+):\s+(\w+):\s?(.*)$")
# function_graph: " 1)   3.456 us    |  name();", " 1)  + 12.3 us   |  } /* name */"
# (a module's function reads "name [module]")
GRAPH_RE = re.compile(r"^\s*(\d+)\)\s+(?:.*?\|\s+)?(?:[+!#*@$]\s+)?([\d.]+) us\s+\|\s*"
                      r"(?:\}\s*/\*\s*([\w.]+)(?: \[\w+\])?\s*\*/|([\w.]+)(?: \[\w+\])?\(\);)")
GRAPH_OPEN_RE = re.compile(r"^\s*(\d+)\)\s+(?:.*?\|\s+)?\|\s*([\w.]+)(?: \[\w+\])?\(\)\s*\{")
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


@dataclass(frozen=True)
class Event:
    """One tracepoint hit."""

    comm: str
    pid: int
    cpu: int
    ts_us: float
    name: str
    fields: str


def events(text: str) -> Iterator[Event]:
    """The tracepoint lines of a ``trace`` file, in order (comments and others skipped)."""
    for line in text.splitlines():
        m = EVENT_RE.match(line)
        if m:
            yield Event(m.group(1).strip(), int(m.group(2)), int(m.group(3)),
                        float(m.group(4)) * 1e6, m.group(5), m.group(6))


def field(fields: str, key: str) -> str | None:
    """The value of ``key=value`` in an event's fields."""
    m = re.search(r"(?:^|[\s,])" + re.escape(key) + r"[=\s]([^\s,]+)", fields)
    return m.group(1) if m else None


def summary(values: list[float]) -> dict[str, float | int | None]:
    """count, median, p90, p99 and max of ``values`` (None where empty)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"n": len(ordered), "p50": statistics.median(ordered), "p90": pct(0.90),
            "p99": pct(0.99), "max": ordered[-1]}


def workqueue(evs: Iterable[Event], wq_name: str, requests: float) -> dict:
    """CMWQ: queue -> execute latency, execution time, work items and kworkers per request.

    Work items are those ``workqueue_queue_work`` put on ``wq_name``; their
    execute_start/end are matched by the work struct's (hashed) address.
    """
    queued: dict[str, float] = {}
    started: dict[str, float] = {}
    waits: list[float] = []
    runs: list[float] = []
    workers: set[int] = set()
    items = 0
    switches = 0
    for ev in evs:
        if ev.name == "workqueue_queue_work" and field(ev.fields, "workqueue") == wq_name:
            work = field(ev.fields, "struct")
            if work:
                queued[work] = ev.ts_us
                items += 1
        elif ev.name == "workqueue_execute_start":
            work = ev.fields.split()[2].rstrip(":") if ev.fields.startswith("work struct") else ""
            if work in queued:
                waits.append(ev.ts_us - queued.pop(work))
                started[work] = ev.ts_us
                workers.add(ev.pid)
        elif ev.name == "workqueue_execute_end":
            work = ev.fields.split()[2].rstrip(":") if ev.fields.startswith("work struct") else ""
            if work in started:
                runs.append(ev.ts_us - started.pop(work))
        elif ev.name == "sched_switch":
            switches += 1
    per = requests or float("nan")
    return {"queue_to_start_us": summary(waits), "execution_us": summary(runs),
            "waits": waits, "work_items": items, "work_items_per_req": items / per,
            "kworkers": len(workers), "kworkers_per_req": len(workers) / per,
            "sched_switch_per_req": switches / per}


def kthreads(evs: Iterable[Event], prefix: str, requests: float) -> dict:
    """kthread per connection: creation -> first run as a worker, and context switches.

    A worker is created by kthreadd (``task_newtask``), named ``prefix/N``
    (``task_rename``), woken by the listener (``sched_wakeup``), and first runs its
    connection at the next ``sched_switch`` to it.
    """
    created: dict[int, float] = {}
    named: set[int] = set()
    woken: dict[int, float] = {}
    to_run: list[float] = []
    wake_to_run: list[float] = []
    switches = mine = 0
    for ev in evs:
        if ev.name == "task_newtask":
            pid = field(ev.fields, "pid")
            if pid:
                created[int(pid)] = ev.ts_us
        elif ev.name == "task_rename":
            pid = field(ev.fields, "pid")
            new = field(ev.fields, "newcomm") or ""
            if pid and new.startswith(prefix + "/"):
                named.add(int(pid))
        elif ev.name == "sched_wakeup":
            pid = int(field(ev.fields, "pid") or -1)
            if pid in named and pid not in woken:
                woken[pid] = ev.ts_us
        elif ev.name == "sched_switch":
            switches += 1
            prev = field(ev.fields, "prev_comm") or ""
            nxt = field(ev.fields, "next_comm") or ""
            if prev.startswith(prefix + "/") or nxt.startswith(prefix + "/"):
                mine += 1
            pid = int(field(ev.fields, "next_pid") or -1)
            if pid in woken and pid in named:
                if pid in created:
                    to_run.append(ev.ts_us - created.pop(pid))
                wake_to_run.append(ev.ts_us - woken[pid])
                named.discard(pid)
    per = requests or float("nan")
    return {"create_to_run_us": summary(to_run), "wakeup_to_run_us": summary(wake_to_run),
            "waits": to_run, "threads": len(to_run), "sched_switch_per_req": switches / per,
            "worker_switch_per_req": mine / per}


def graph(text: str, requests: float, top: int = 12) -> list[dict]:
    """function_graph output: the ``top`` functions by inclusive time, per request."""
    total: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        m = GRAPH_RE.match(line)
        if m:
            name = m.group(3) or m.group(4)
            total[name] += float(m.group(2))
            if m.group(4):
                calls[name] += 1
            continue
        m = GRAPH_OPEN_RE.match(line)
        if m:
            calls[m.group(2)] += 1
    per = requests or float("nan")
    rows = [{"function": name, "us_per_req": us / per, "calls_per_req": calls[name] / per,
             "us_per_call": us / calls[name] if calls[name] else None}
            for name, us in total.items()]
    rows.sort(key=lambda r: r["us_per_req"], reverse=True)
    return rows[:top]


def syscall_names(header: Path = UNISTD) -> dict[int, str]:
    """{number: name} from the installed x86_64 ``asm/unistd_64.h``."""
    names: dict[int, str] = {}
    try:
        text = header.read_text()
    except OSError:
        return names
    for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", text):
        names[int(m.group(2))] = m.group(1)
    return names


def syscalls(evs: Iterable[Event], pids: set[int] | None, requests: float,
             top: int = 10) -> list[dict]:
    """raw_syscalls: calls per request by name, with their latency (enter -> exit)."""
    names = syscall_names()
    entered: dict[int, tuple[int, float]] = {}
    lat: dict[int, list[float]] = defaultdict(list)
    count: Counter[int] = Counter()
    for ev in evs:
        if pids is not None and ev.pid not in pids:
            continue
        if ev.name == "sys_enter":
            m = re.match(r"NR (-?\d+)", ev.fields)
            if m:
                nr = int(m.group(1))
                count[nr] += 1
                entered[ev.pid] = (nr, ev.ts_us)
        elif ev.name == "sys_exit":
            m = re.match(r"NR (-?\d+)", ev.fields)
            if m and ev.pid in entered and entered[ev.pid][0] == int(m.group(1)):
                nr, t = entered.pop(ev.pid)
                lat[nr].append(ev.ts_us - t)
    per = requests or float("nan")
    rows = []
    for nr, n in count.most_common(top):
        s = summary(lat[nr])
        rows.append({"syscall": names.get(nr, f"#{nr}"), "per_req": n / per,
                     "p50_us": s["p50"], "p99_us": s["p99"]})
    return rows
