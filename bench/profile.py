"""``python -m bench --profile``: where a Python server spends its CPU, per function.

After the measured runs, each (server, workload) gets one more run, at the plan's
first concurrency and at least :data:`MIN_DURATION` long (enough samples), while
``py-spy record --subprocesses`` samples the server's whole process tree over the
measured window (the server's active stacks only: a thread blocked in epoll_wait or
recv costs no CPU and is not sampled). From those samples
it writes a flame graph (``profile-<server>-<workload>.svg``, frames merged by
function) and the functions with the most self time (the samples where a function
is the innermost frame: what it costs itself, without its callees; a system call
counts for the Python function that made it, since py-spy sees no deeper). The table goes
to the console, to ``profile.md`` and under ``summary.md``.

Profiled runs are kept out of every measured figure: they are extra runs, and
their records go to ``profile.json`` only. Their own server CPU per request is set
against the same cell's unprofiled median to state the sampling overhead (py-spy
stops the process for each sample, at :data:`RATE` per second; py-spy itself runs
pinned to the load generator's cores). Where py-spy is missing or cannot attach
(ptrace refused), the run says so and goes on without profiles; a C or kernel
server has no Python stacks and is not profiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from tabulate import tabulate

from bench import metrics, runner
from bench.records import Run

RATE = 250  # samples per second
MIN_DURATION = 2.0  # seconds of a profiled run's window, whatever --duration
TOP = 12  # functions in the self-time table
SVG_WIDTH = 1200
ROW = 17


def py_spy() -> str | None:
    """The py-spy executable: beside this Python (a virtualenv) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("py-spy")


def unavailable() -> str | None:
    """None when py-spy can sample a process here, else why not (checked on a child)."""
    spy = py_spy()
    if spy is None:
        return "py-spy is not installed (pip install py-spy)"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"],
                             stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # past the interpreter's start-up, so there is a stack to read
        done = subprocess.run([spy, "dump", "--pid", str(child.pid)], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"py-spy failed: {exc}"
    finally:
        child.kill()
        child.wait()
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"py-spy cannot attach here: {tail[:160]}"
    return None


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw output (``frame;frame;... count`` a line) as stack -> samples. The
    root frame names the process; its id is dropped, so a forking server's children
    (the same command) merge into one flame."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("process "):
            _, _, command = frames[0].partition(":")
            frames[0] = f"process {command}"
        stacks[tuple(frames)] += int(count)
    return stacks


def top_self(stacks: Counter[tuple[str, ...]], n: int = TOP) -> list[tuple[str, int, float]]:
    """The ``n`` functions with the most self samples: (function, samples, share)."""
    own: Counter[str] = Counter()
    for stack, count in stacks.items():
        own[stack[-1]] += count
    total = sum(own.values()) or 1
    return [(name, count, count / total) for name, count in own.most_common(n)]


def _tree(stacks: Counter[tuple[str, ...]]) -> dict[str, Any]:
    root: dict[str, Any] = {"count": 0, "children": {}}
    for stack, count in stacks.items():
        node = root
        node["count"] += count
        for frame in stack:
            node = node["children"].setdefault(frame, {"count": 0, "children": {}})
            node["count"] += count
    return root


def _colour(name: str) -> str:
    digest = hashlib.md5(name.encode(), usedforsecurity=False).digest()
    return f"rgb({205 + digest[0] % 50},{80 + digest[1] % 130},{digest[2] % 55})"


def flame_svg(stacks: Counter[tuple[str, ...]], title: str) -> str:
    """A flame graph (callers below, callees above, width = samples) as SVG text."""
    root = _tree(stacks)
    total = root["count"] or 1
    rows: list[tuple[int, float, float, str, int]] = []  # depth, x, width, name, samples

    def walk(node: dict[str, Any], depth: int, x: float) -> int:
        deepest = depth
        for name, child in sorted(node["children"].items()):
            width = child["count"] / total * SVG_WIDTH
            rows.append((depth, x, width, name, child["count"]))
            deepest = max(deepest, walk(child, depth + 1, x))
            x += width
        return deepest

    depth = walk(root, 0, 0.0) + 1
    height = (depth + 2) * ROW
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" '
             f'height="{height}" font-family="monospace" font-size="11">',
             f'<text x="4" y="{ROW - 4}">{html.escape(title)} ({total} samples)</text>']
    for level, x, width, name, count in rows:
        if width < 0.3:
            continue
        y = height - (level + 1) * ROW
        label = html.escape(name)
        parts.append(f'<g><title>{label} ({count} samples, {count / total:.1%})</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{ROW - 1}" '
                     f'fill="{_colour(name)}"/>')
        chars = int(width / 6.6)
        if chars >= 3:
            text = name if len(name) <= chars else name[:chars - 2] + ".."
            parts.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 5}">{html.escape(text)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


class Sampler:
    """py-spy recording one process tree until :meth:`stop`."""

    def __init__(self, pid: int, raw_path: str, cpus: list[int] | None) -> None:
        spy = py_spy()
        assert spy is not None
        self.raw_path = raw_path
        argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--nolineno",
                "--rate", str(RATE), "--format", "raw", "--output", raw_path]
        self.proc = subprocess.Popen(runner._pinned(argv, cpus), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def stop(self) -> tuple[Counter[tuple[str, ...]] | None, str]:
        """Stop sampling; (stacks, "") or (None, why there are none)."""
        try:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None, "py-spy did not stop within 20 s (killed)"
        try:
            with open(self.raw_path, encoding="utf-8", errors="replace") as f:
                stacks = parse_collapsed(f.read())
        except OSError:
            tail = (err.strip().splitlines() or ["no message"])[-1]
            return None, f"py-spy wrote nothing: {tail[:160]}"
        return (stacks, "") if stacks else (None, "no samples (the server was idle)")


def profiled_run(target: runner.Target, label: str, concurrency: int,
                 settings: runner.Settings, cpus: tuple[list[int], list[int]],
                 out_dir: str) -> dict[str, Any]:
    """One extra run of ``target`` under py-spy; its record (never a measured figure)."""
    record: dict[str, Any] = {"server": target.name, "workload": label,
                              "concurrency": concurrency, "status": "failed", "reason": "",
                              "svg": None, "samples": 0, "top": [], "cpu_us_per_req": None}
    if target.kind != "python":
        record.update(status="n/a", reason="no Python stacks (a C or kernel server)")
        return record
    extra, why = runner.app_args(target, label, settings)
    if extra is None:
        record.update(status="n/a", reason=why)
        return record
    server_cpus, client_cpus = cpus
    settings = dataclasses.replace(settings, duration=max(settings.duration, MIN_DURATION))
    try:
        server = runner.start_server(target, runner.protocol_of(label), settings, server_cpus,
                                     ready_timeout=settings.ready_timeout, extra=extra)
    except runner.StartFailure as exc:
        record.update(status="skipped" if exc.skipped else "failed", reason=exc.reason)
        return record
    base = os.path.join(out_dir, f"profile-{target.name}-{label.replace('@', '-')}")
    try:
        loadgen = runner.start_load(server, label, concurrency, settings, client_cpus)
        runner.await_window(server, loadgen, settings)
        usage_of = metrics.TreeSampler(server.proc.pid)
        usage_of.start()
        sampler = Sampler(server.proc.pid, base + ".txt", client_cpus)
        time.sleep(runner.window_span(settings))
        stacks, why = sampler.stop()
        usage = usage_of.stop()
        result, problem, _ = runner.finish_loadgen(
            loadgen, settings.duration + settings.timeout + settings.slack)
    finally:
        server.stop()
    if stacks is None:
        record["reason"] = why
        return record
    title = f"{target.name}, {label}, {concurrency} connections"
    with open(base + ".svg", "w", encoding="utf-8") as f:
        f.write(flame_svg(stacks, title))
    os.unlink(base + ".txt")
    record.update(status="ok", svg=os.path.basename(base + ".svg"),
                  samples=sum(stacks.values()), top=top_self(stacks))
    if result is None:
        record["reason"] = problem
    elif result["requests_per_s"]:
        record["cpu_us_per_req"] = usage.cpu_s / (result["requests_per_s"] * usage.window_s) * 1e6
    return record


def run_profiles(order: list[tuple[int, str, int, runner.Target]], runs: list[Run],
                 settings: runner.Settings, cpus: tuple[list[int], list[int]],
                 out_dir: str) -> list[dict[str, Any]]:
    """A profiled run per (server, workload) of the plan, at its first concurrency, with
    its overhead against that cell's unprofiled median CPU per request."""
    first_conc = min(conc for _, _, conc, _ in order)
    cells = {(target.name, label): target for _, label, conc, target in order
             if conc == first_conc}
    profiles = []
    for (name, label), target in cells.items():
        record = profiled_run(target, label, first_conc, settings, cpus, out_dir)
        plain = sorted(r.cpu_us_per_req for r in runs
                       if r.cell == (name, label, first_conc) and r.cpu_us_per_req)
        if plain and record["cpu_us_per_req"]:
            record["overhead"] = record["cpu_us_per_req"] / plain[len(plain) // 2] - 1
        profiles.append(record)
        print(f"bench: profiled {name} {label}: {record['status']} "
              f"{record['reason']}".rstrip(), file=sys.stderr)
    return profiles


def profile_report(profiles: list[dict[str, Any]], fmt: str = "simple") -> str:
    """Per profiled cell: its flame graph, overhead and top functions by self time."""
    parts = [f"Profiles (py-spy, {RATE} samples/s over each extra run; not in the figures "
             "above). Self time: samples whose innermost frame is the function."]
    for p in profiles:
        head = f"{p['server']} {p['workload']} @{p['concurrency']}: "
        if p["status"] != "ok":
            parts.append(head + f"not profiled ({p['reason']})")
            continue
        overhead = (f"sampling overhead {p['overhead']:+.0%} server CPU per request"
                    if "overhead" in p else "overhead not known (no unprofiled run)")
        parts.append(head + f"{p['samples']} samples, {overhead}; flame graph {p['svg']}")
        rows = [[name, count, f"{share:.1%}"] for name, count, share in p["top"]]
        parts.append(tabulate(rows, headers=["function (file)", "self samples", "share"],
                              tablefmt=fmt))
    return "\n\n".join(parts)


def write(profiles: list[dict[str, Any]], out_dir: str) -> list[str]:
    """profile.json, profile.md, and the tables appended to summary.md (if written)."""
    with open(os.path.join(out_dir, "profile.json"), "w", encoding="utf-8") as f:
        json.dump(profiles, f, indent=1)
    text = profile_report(profiles, "github")
    with open(os.path.join(out_dir, "profile.md"), "w", encoding="utf-8") as f:
        f.write("# Profiles\n\n" + text + "\n")
    summary = os.path.join(out_dir, "summary.md")
    if os.path.exists(summary):
        with open(summary, "a", encoding="utf-8") as f:
            f.write("\n## Profiles\n\n" + text + "\n")
    return ["profile.json", "profile.md"] + [p["svg"] for p in profiles if p["svg"]]
