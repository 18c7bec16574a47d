"""The tracing view of ``python -m bench --vm --trace``: where the time goes, from tracefs.

Runs inside the QEMU guest (the host cannot load the modules). For each server and
workload of the plan, at one concurrency, it measures an untraced run (the
harness's own :func:`bench.runner.measure`) and then a traced one with the same
settings, so the tracing overhead is stated as the ratio of the two; traced figures
are written to their own table, ``trace.md``, and ``trace.json``, never into the
benchmark's results.

What is traced, by the server's kind (:mod:`bench.vm_trace_parse` reads it):

* CMWQ (kecho, khttpd): ``workqueue_queue_work`` -> ``workqueue_execute_start``
  latency (a histogram, ``trace-latency.png``), execution time per work item, work
  items and kworkers per request;
* kthread per connection: creation (``task_newtask``) -> first run as the
  connection's worker, and ``sched_switch`` per request;
* khttpd's hot path: a second traced run under the function_graph tracer limited to
  the module's functions and the socket calls it makes, on-CPU time only
  (``sleep-time`` off): the top functions by inclusive time per request;
* user-space servers: ``raw_syscalls`` of the server's processes, calls per request
  by name and their latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import metrics, runner
from bench import vm_trace_parse as parse
from bench.records import Run, Status
from servers.kmod_launch import SERVERS as KERNEL_SERVERS

TRACEFS = Path("/sys/kernel/tracing")
BUFFER_KB = 8192  # per CPU; a drop is reported, never hidden
READ_LIMIT = 256 << 20  # bytes of trace text read at most
# The socket calls khttpd makes, traced with its own functions under function_graph.
SOCKET_CALLS = ("kernel_recvmsg", "kernel_sendmsg", "sock_recvmsg", "sock_sendmsg",
                "tcp_recvmsg", "tcp_sendmsg")
GRAPH_CONCURRENCY = 8  # function_graph under TCG: a light load keeps the buffer whole
# A keep-alive workload queues one work item per connection, before the window opens; its
# connection-per-request twin shows CMWQ's queueing, so a CMWQ server is traced on both.
CONNECT_TWIN = {"echo": "echo-connect", "http": "http-connect"}


class TraceError(RuntimeError):
    """tracefs is missing or refused a setting."""


@dataclass(frozen=True)
class Plan:
    """One traced comparison: a server, a workload, a concurrency, what to trace."""

    target: runner.Target
    workload: str
    concurrency: int
    kind: str  # "workqueue", "kthread", "graph" or "syscalls"

    @property
    def module(self) -> str:
        """The kernel module (its workqueue and thread names), for a kernel server."""
        return KERNEL_SERVERS[self.target.argv[-1]].module


def _write(name: str, value: str, append: bool = False) -> None:
    try:
        with open(TRACEFS / name, "a" if append else "w") as f:
            f.write(value)
    except OSError as exc:
        raise TraceError(f"tracefs {name} <- {value!r}: {exc}") from exc


def mount() -> None:
    """Mount tracefs at /sys/kernel/tracing unless it is there already."""
    if (TRACEFS / "trace").exists():
        return
    proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0 or not (TRACEFS / "trace").exists():
        raise TraceError(f"cannot mount tracefs: {proc.stderr.strip()}")


def reset() -> None:
    """Tracing off, no events, no filters, the nop tracer, an empty buffer."""
    _write("tracing_on", "0")
    _write("current_tracer", "nop")
    _write("set_event", "")
    _write("set_event_pid", "")
    _write("set_ftrace_filter", "")
    _write("trace", "")


def drain() -> str:
    """Everything in the buffer, by a consuming read of ``trace_pipe``.

    Reading ``trace`` instead re-walks the buffer from its start for every chunk a
    reader asks for: quadratic, minutes of kernel time under TCG for a few MiB.
    """
    chunks = []
    got = 0
    fd = os.open(TRACEFS / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while got < READ_LIMIT:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def tracing(on: bool) -> None:
    """Start or stop recording into the buffer."""
    _write("tracing_on", "1" if on else "0")


def dropped() -> int:
    """Events lost to a full buffer, summed over the CPUs (per_cpu/*/stats)."""
    lost = 0
    for stats in TRACEFS.glob("per_cpu/cpu*/stats"):
        for line in stats.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("overrun", "dropped events"):
                lost += int(value.split()[0] or 0)
    return lost


def configure(kind: str, module: str = "", pids: list[int] | None = None) -> None:
    """Set tracefs up for one ``kind`` of trace (see :class:`Plan`), tracing still off."""
    reset()
    _write("buffer_size_kb", str(BUFFER_KB))
    _write("options/overwrite", "0")
    if kind == "workqueue":
        _write("set_event", "workqueue:workqueue_queue_work\n"
               "workqueue:workqueue_execute_start\nworkqueue:workqueue_execute_end\n"
               "sched:sched_switch\n")
    elif kind == "kthread":
        _write("set_event", "task:task_newtask\ntask:task_rename\nsched:sched_wakeup\n"
               "sched:sched_switch\n")
    elif kind == "syscalls":
        _write("options/event-fork", "1")
        _write("set_event_pid", " ".join(map(str, pids or [])))
        _write("set_event", "raw_syscalls:sys_enter\nraw_syscalls:sys_exit\n")
    else:
        _write("set_ftrace_filter", f":mod:{module}\n")
        for call in SOCKET_CALLS:
            _write("set_ftrace_filter", call + "\n", append=True)
        _write("options/sleep-time", "0")
        _write("options/funcgraph-tail", "1")
        _write("options/funcgraph-irqs", "0")
        _write("current_tracer", "function_graph")


def unconfigure() -> None:
    """Back to the defaults :func:`configure` changed."""
    reset()
    for option, default in (("event-fork", "0"), ("sleep-time", "1"),
                            ("funcgraph-tail", "0"), ("funcgraph-irqs", "1")):
        _write(f"options/{option}", default)


@contextmanager
def session(plan: Plan, server: runner.Server) -> Iterator[None]:
    """Set tracefs up for ``plan`` against the running ``server``; reset afterwards."""
    try:
        pids = [p.pid for p in metrics.tree(server.proc.pid)] if plan.kind == "syscalls" else []
        configure(plan.kind, plan.module if plan.target.kind == "kernel" else "", pids)
        yield
    finally:
        unconfigure()


def plans(order: list[tuple[int, str, int, runner.Target]]) -> list[Plan]:
    """One traced comparison per (server, workload) of the plan, at its middle concurrency;
    khttpd also gets a function_graph run."""
    chosen: dict[tuple[str, str], tuple[int, str, int, runner.Target]] = {}
    concs: dict[tuple[str, str], list[int]] = {}
    for item in order:
        _, workload, conc, target = item
        key = (target.name, workload)
        chosen.setdefault(key, item)
        concs.setdefault(key, []).append(conc)
    out = []
    for key, (_, workload, _, target) in chosen.items():
        levels = sorted(set(concs[key]))
        conc = levels[len(levels) // 2]
        if target.kind != "kernel":
            out.append(Plan(target, workload, conc, "syscalls"))
        elif "kthread" in target.name:
            out.append(Plan(target, workload, conc, "kthread"))
        else:
            out.append(Plan(target, workload, conc, "workqueue"))
            twin = CONNECT_TWIN.get(workload)
            if twin and (target.name, twin) not in chosen:
                out.append(Plan(target, twin, conc, "workqueue"))
            if target.name.startswith("khttpd") and workload == "http":
                out.append(Plan(target, workload, min(conc, GRAPH_CONCURRENCY), "graph"))
    return out


def traced_run(plan: Plan, settings: runner.Settings) -> dict[str, Any]:
    """One run with tracing on for the measured window; the parsed figures."""
    server_cpus, client_cpus = runner.split_cpus()
    proto = runner.protocol_of(plan.workload)
    server = runner.start_server(plan.target, proto, settings, server_cpus,
                                 ready_timeout=settings.ready_timeout)
    try:
        with session(plan, server):
            loadgen = runner.start_load(server, plan.workload, plan.concurrency, settings,
                                        client_cpus)
            runner.await_window(server, loadgen, settings)
            span = runner.window_span(settings)
            tracing(True)
            began = time.monotonic()
            time.sleep(span)
            tracing(False)
            window = time.monotonic() - began
            bound = settings.duration + settings.timeout + settings.slack
            result, problem, _ = runner.finish_loadgen(loadgen, bound)
            if result is None:
                raise TraceError(problem)
            lost = dropped()
            text = drain()
    finally:
        server.stop()
    requests = float(result["requests_per_s"]) * window
    out: dict[str, Any] = {"requests_per_s": result["requests_per_s"], "window_s": window,
                           "requests": requests, "dropped_events": lost}
    if plan.kind == "workqueue":
        out.update(parse.workqueue(parse.events(text), plan.module, requests))
    elif plan.kind == "kthread":
        out.update(parse.kthreads(parse.events(text), plan.module, requests))
    elif plan.kind == "syscalls":
        out["syscalls"] = parse.syscalls(parse.events(text), None, requests)
    else:
        out["functions"] = parse.graph(text, requests)
    return out


def untraced(before: Run, after: Run) -> dict[str, Any]:
    """The untraced reference around a traced run: the mean req/s of the runs before and
    after it, and their range (the noise the overhead ratio must be read against)."""
    rates = [r.requests_per_s for r in (before, after) if r.requests_per_s]
    cpu = [r.cpu_us_per_req for r in (before, after) if r.cpu_us_per_req]
    return {"requests_per_s": sum(rates) / len(rates) if rates else None,
            "range": (min(rates), max(rates)) if rates else None,
            "cpu_us_per_req": sum(cpu) / len(cpu) if cpu else None}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def tables(rows: list[tuple[Plan, dict[str, Any], dict[str, Any]]], note: str) -> str:
    """The tracing view as Markdown: one section per kind."""
    from tabulate import tabulate

    head = ["# Tracing view (traced runs only; not comparable with untraced figures)", "",
            note, "", "Overhead: traced req/s / untraced req/s, same server, workload, "
            "connections and settings: the mean of an untraced run before and one after "
            "the traced run; their range is the noise to read the ratio against.", ""]
    wq, kt, graphs, sys_rows = [], [], [], []
    over = []
    for plan, base, traced in rows:
        label = f"{plan.target.name} {plan.workload} c={plan.concurrency}"
        ratio = (traced["requests_per_s"] / base["requests_per_s"]
                 if base.get("requests_per_s") else None)
        span = base.get("range")
        over.append([label, plan.kind, _fmt(base.get("requests_per_s"), 0),
                     f"{span[0]:,.0f}-{span[1]:,.0f}" if span else "-",
                     _fmt(traced["requests_per_s"], 0), _fmt(ratio, 2),
                     traced["dropped_events"]])
        if plan.kind == "workqueue":
            q, e = traced["queue_to_start_us"], traced["execution_us"]
            wq.append([label, _fmt(q["p50"]), _fmt(q["p99"]), _fmt(e["p50"]), _fmt(e["p99"]),
                       _fmt(traced["work_items_per_req"], 3), traced["kworkers"],
                       _fmt(traced["sched_switch_per_req"], 2)])
        elif plan.kind == "kthread":
            c, w = traced["create_to_run_us"], traced["wakeup_to_run_us"]
            kt.append([label, traced["threads"], _fmt(c["p50"]), _fmt(c["p99"]),
                       _fmt(w["p50"]), _fmt(traced["sched_switch_per_req"], 2),
                       _fmt(traced["worker_switch_per_req"], 2)])
        elif plan.kind == "graph":
            for f in traced["functions"]:
                graphs.append([label, f["function"], _fmt(f["us_per_req"], 2),
                               _fmt(f["calls_per_req"], 2), _fmt(f["us_per_call"], 2)])
        else:
            for s in traced["syscalls"]:
                sys_rows.append([label, s["syscall"], _fmt(s["per_req"], 2),
                                 _fmt(s["p50_us"]), _fmt(s["p99_us"])])
    out = head + ["## Overhead", "", tabulate(over, headers=[
        "run", "traced", "untraced req/s", "untraced range", "traced req/s",
        "traced/untraced",
        "events dropped"], tablefmt="github"), ""]
    if wq:
        out += ["## CMWQ: workqueue_queue_work -> execute_start, and each work item", "",
                tabulate(wq, headers=["run", "queue->start p50 us", "p99 us", "exec p50 us",
                                      "exec p99 us", "work items/req", "kworkers",
                                      "sched_switch/req"], tablefmt="github"), ""]
    if kt:
        out += ["## kthread per connection: creation -> first run", "",
                tabulate(kt, headers=["run", "threads", "create->run p50 us", "p99 us",
                                      "wakeup->run p50 us", "sched_switch/req",
                                      "worker switches/req"], tablefmt="github"), ""]
    if graphs:
        out += ["## khttpd hot path (function_graph, on-CPU inclusive time)", "",
                tabulate(graphs, headers=["run", "function", "us/req", "calls/req",
                                          "us/call"], tablefmt="github"), ""]
    if sys_rows:
        out += ["## User-space servers: system calls (raw_syscalls)", "",
                tabulate(sys_rows, headers=["run", "syscall", "per req", "p50 us",
                                            "p99 us"], tablefmt="github"), ""]
    return "\n".join(out)


def plot(rows: list[tuple[Plan, dict[str, Any], dict[str, Any]]], path: Path) -> bool:
    """Histograms (log-spaced bins) of queue->start and creation->run latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(f"{p.target.name} {p.workload} c={p.concurrency}"
               + (" (queue->start)" if p.kind == "workqueue" else " (create->run)"), t["waits"])
              for p, _b, t in rows if p.kind in ("workqueue", "kthread") and t.get("waits")]
    if not series:
        return False
    low = max(min(min(w) for _, w in series), 0.1)
    high = max(max(w) for _, w in series)
    bins = np.logspace(np.log10(low), np.log10(max(high, low * 10)), 40)
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, waits in series:
        ax.hist([max(w, low) for w in waits], bins=bins, histtype="step", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("microseconds (log scale)")
    ax.set_ylabel("work items / threads")
    ax.set_title("From queueing (CMWQ) or creation (kthread) to first run, traced in the guest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(order: list[tuple[int, str, int, runner.Target]], settings: runner.Settings,
        out_dir: str, note: str) -> int:
    """``python -m bench --vm --trace`` in the guest: the tables, the plot; exit status."""
    try:
        mount()
        reset()
    except TraceError as exc:
        print(f"bench --trace: {exc}", flush=True)
        return 1
    rows = []
    failed = 0
    server_cpus, client_cpus = runner.split_cpus()
    for plan in plans(order):
        label = f"{plan.target.name} {plan.workload} c={plan.concurrency} ({plan.kind})"
        print(f"trace: {label}: untraced, traced, untraced", flush=True)
        before = runner.measure(plan.target, plan.workload, plan.concurrency, settings, 0,
                                (server_cpus, client_cpus), use_perf=False)
        if before.status == Status.SKIPPED:
            print(f"trace: {label}: skipped: {before.reason}", flush=True)
            continue
        try:
            traced = traced_run(plan, settings)
        except (TraceError, runner.StartFailure, OSError) as exc:
            print(f"trace: {label}: failed: {exc}", flush=True)
            failed += 1
            continue
        after = runner.measure(plan.target, plan.workload, plan.concurrency, settings, 0,
                               (server_cpus, client_cpus), use_perf=False)
        base = untraced(before, after)
        rows.append((plan, base, traced))
        print(f"trace: {label}: {traced['requests_per_s']:,.0f} req/s traced, "
              f"{base['requests_per_s'] or 0:,.0f} untraced (mean of the two around it), "
              f"{traced['dropped_events']} events dropped", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = tables(rows, note)
    (out / "trace.md").write_text(text + "\n")
    (out / "trace.json").write_text(json.dumps(
        [{"server": p.target.name, "workload": p.workload, "concurrency": p.concurrency,
          "kind": p.kind, "untraced_requests_per_s": b.get("requests_per_s"),
          "traced": {k: v for k, v in t.items() if k != "waits"}} for p, b, t in rows],
        indent=1, default=str))
    written = ["trace.md", "trace.json"]
    if plot(rows, out / "trace-latency.png"):
        written.append("trace-latency.png")
    print(text, flush=True)
    print(f"\nbench --trace: wrote {', '.join(written)} to {out_dir}", flush=True)
    return 1 if failed or not rows else 0
