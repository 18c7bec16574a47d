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
pinned to the load generator's cores). A C or kernel server has no Python stacks
and is not profiled.

Where py-spy is missing or cannot attach (ptrace refused, or a Python it does not
read), ``perf record`` samples the server tree instead, the server started with
CPython's perf trampoline (``PYTHONPERFSUPPORT=1``, Python 3.12+), which names each
Python function in the native stacks perf reads; ``--profiler perf`` asks for it.
Its samples go through the same flame graph and self-time table: Python frames as
py-spy names them, native and kernel frames as ``symbol [library]`` above the
Python function that called them, and a sample's self time counted for its
innermost Python function, as py-spy counts it. On an interpreter built without
frame pointers (most), perf unwinds by DWARF, which stops at the innermost Python
function: the flame graph then shows each function's own cost and the native code
under it, not who called it. Where neither can sample, the run says why and goes on
without profiles.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import psutil
from tabulate import tabulate

from bench import metrics, runner, server_process
from bench.records import Run

RATE = 250  # samples per second
MIN_DURATION = 2.0  # seconds of a profiled run's window, whatever --duration
TOP = 12  # functions in the self-time table
PROFILERS = ("auto", "py-spy", "perf")
PERF_STACK_BYTES = 8192  # user stack copied per sample for DWARF unwinding
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


def perf_unavailable(python: str = sys.executable) -> str | None:
    """None when perf can sample ``python``'s functions here, else why not (checked by
    recording that interpreter switching its perf trampoline on)."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf is not installed"
    probe = ("import os, sys\n"
             "if sys.version_info < (3, 12): sys.exit('needs Python 3.12+ (its perf "
             "trampoline), the server runs %d.%d' % sys.version_info[:2])\n"
             "sys.activate_stack_trampoline('perf')\n"
             "sys.deactivate_stack_trampoline()\n"
             "os.unlink('/tmp/perf-%d.map' % os.getpid())\n")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-o",
                                   os.path.join(tmp, "perf.data"), "--", python, "-c", probe],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"perf failed: {exc}"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return tail[:200]
    return None


def frame_pointers(python: str = sys.executable) -> bool:
    """Whether ``python`` was built with frame pointers (perf can then walk every frame)."""
    done = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var"
                           "('CFLAGS') or '')"], capture_output=True, text=True, timeout=30)
    return "-fno-omit-frame-pointer" in done.stdout


def choose(profiler: str = "auto", python: str = sys.executable) -> tuple[str | None, str]:
    """The sampler for ``--profiler`` ("auto": py-spy, else perf): (tool, note), or
    (None, why none can sample here)."""
    if profiler not in PROFILERS:
        raise ValueError(f"unknown profiler {profiler!r} (one of {', '.join(PROFILERS)})")
    spy_why = unavailable() if profiler != "perf" else "--profiler perf"
    if spy_why is None:
        return "py-spy", ""
    if profiler == "py-spy":
        return None, spy_why
    perf_why = perf_unavailable(python)
    if perf_why is None:
        return "perf", f"{spy_why}: sampling with perf and CPython's perf trampoline"
    return None, f"{spy_why}; perf fallback unavailable: {perf_why}"


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


_PERF_FRAME = re.compile(r"^\s*[0-9a-f]+ (.+) \((.+)\)$")
_LIBRARY_DIR = re.compile(r"^.*/(?:site-packages|dist-packages|lib/python3\.\d+)/")


def _short_path(file: str) -> str:
    """A source path as py-spy shows it: from its package (site-packages, the standard
    library) or from the checkout."""
    if file.startswith(runner.REPO + os.sep):
        return file[len(runner.REPO) + 1:]
    return _LIBRARY_DIR.sub("", file)


def _is_native(frame: str) -> bool:
    return frame.endswith("]")  # "symbol [library]"; Python frames end "(file)"


def parse_perf_script(text: str, commands: dict[int, str]) -> Counter[tuple[str, ...]]:
    """``perf script -F pid,ip,sym,dso`` output as stack -> samples, root first: the
    process (its command from ``commands``, by process id), Python functions named by
    the perf trampoline as py-spy names them, other frames as ``symbol [library]``."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        pid = int(lines[0])
        frames = []
        for line in lines[1:]:
            match = _PERF_FRAME.match(line)
            if match is None or match.group(1) == "[unknown]":
                continue
            symbol, library = match.groups()
            if symbol.startswith("py::"):
                function, _, file = symbol[4:].partition(":")
                frames.append(f"{function} ({_short_path(file)})")
            else:
                frames.append(f"{symbol} [{os.path.basename(library).strip('[]')}]")
        if frames:
            root = f'process "{commands.get(pid, pid)}"'
            stacks[(root, *reversed(frames))] += 1
    return stacks


def top_self(stacks: Counter[tuple[str, ...]], n: int = TOP) -> list[tuple[str, int, float]]:
    """The ``n`` functions with the most self samples: (function, samples, share). What a
    Python function called natively (perf's frames) counts for it, as py-spy counts it."""
    own: Counter[str] = Counter()
    for stack, count in stacks.items():
        python = [frame for frame in stack[1:] if not _is_native(frame)]
        own[python[-1] if python else stack[-1]] += count
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


class _Recorder:
    """A sampling tool (py-spy, perf) recording in the background until SIGINT."""

    name = ""

    def _start(self, argv: list[str], cpus: list[int] | None) -> None:
        self.proc = subprocess.Popen(server_process.pinned(argv, cpus), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def _interrupt(self) -> tuple[str, str | None]:
        """Stop the tool as a user's ^C does; (its stderr, None) or ("", why it failed)."""
        try:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return "", f"{self.name} did not stop within 20 s (killed)"
        return err, None


class Sampler(_Recorder):
    """py-spy recording one process tree until :meth:`stop`."""

    name = "py-spy"

    def __init__(self, pid: int, raw_path: str, cpus: list[int] | None) -> None:
        spy = py_spy()
        assert spy is not None
        self.raw_path = raw_path
        self._start([spy, "record", "--pid", str(pid), "--subprocesses", "--nolineno",
                     "--rate", str(RATE), "--format", "raw", "--output", raw_path], cpus)

    def stop(self) -> tuple[Counter[tuple[str, ...]] | None, str]:
        """Stop sampling; (stacks, "") or (None, why there are none)."""
        err, failed = self._interrupt()
        if failed:
            return None, failed
        try:
            with open(self.raw_path, encoding="utf-8", errors="replace") as f:
                stacks = parse_collapsed(f.read())
        except OSError:
            tail = (err.strip().splitlines() or ["no message"])[-1]
            return None, f"py-spy wrote nothing: {tail[:160]}"
        return (stacks, "") if stacks else (None, "no samples (the server was idle)")


class PerfSampler(_Recorder):
    """``perf record`` sampling one process tree (its processes when started; children
    forked later are followed) until :meth:`stop`. The processes must run with the perf
    trampoline on (``PYTHONPERFSUPPORT=1``), or their Python functions stay unnamed."""

    name = "perf record"

    def __init__(self, pid: int, base: str, cpus: list[int] | None,
                 python: str = sys.executable) -> None:
        perf = shutil.which("perf")
        assert perf is not None
        self.perf = perf
        self.data = base + ".perf.data"
        self.pid = pid
        self.commands = {p.pid: " ".join(p.cmdline()) for p in metrics.tree(pid)}
        walk = (["--call-graph", "fp"] if frame_pointers(python)
                else ["--call-graph", f"dwarf,{PERF_STACK_BYTES}"])
        self._start([perf, "record", "-q", "-e", "cpu-clock", "-F", str(RATE), *walk,
                     "-p", ",".join(map(str, self.commands)), "-o", self.data], cpus)

    def stop(self) -> tuple[Counter[tuple[str, ...]] | None, str]:
        """Stop sampling and read the samples; (stacks, "") or (None, why there are none)."""
        err, failed = self._interrupt()
        if failed:
            return None, failed
        for child in metrics.tree(self.pid)[1:]:
            self.commands.setdefault(child.pid, " ".join(child.cmdline()))
        try:
            if not os.path.exists(self.data):
                tail = (err.strip().splitlines() or ["no message"])[-1]
                return None, f"perf record wrote nothing: {tail[:160]}"
            done = subprocess.run([self.perf, "script", "-i", self.data, "-F",
                                   "pid,ip,sym,dso"], capture_output=True, text=True,
                                  errors="replace", timeout=120)
        except subprocess.TimeoutExpired:
            return None, "perf script took over 120 s"
        finally:
            for path in [self.data, *(f"/tmp/perf-{pid}.map" for pid in self.commands)]:
                if os.path.exists(path):
                    os.unlink(path)  # the trampoline's symbol maps, read by perf script
        stacks = parse_perf_script(done.stdout, self.commands)
        return (stacks, "") if stacks else (None, "no samples (the server was idle)")


_PERF_MAPS = "/tmp/perf-*.map"  # where CPython's perf trampoline writes a process's symbols


def _remove_dead_maps(paths: set[str]) -> None:
    """Remove the trampoline maps of processes that have exited (a server that did not
    start under perf leaves one)."""
    for path in paths:
        pid = path[len("/tmp/perf-"):-len(".map")]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            os.unlink(path)


def profiled_run(target: runner.Target, label: str, concurrency: int,
                 settings: runner.Settings, cpus: tuple[list[int], list[int]],
                 out_dir: str, tool: str = "py-spy") -> dict[str, Any]:
    """One extra run of ``target`` under ``tool`` (py-spy or perf); its record (never a
    measured figure)."""
    record: dict[str, Any] = {"server": target.name, "workload": label, "profiler": tool,
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
    maps = set(glob.glob(_PERF_MAPS))
    try:
        server = runner.start_server(target, runner.protocol_of(label), settings, server_cpus,
                                     ready_timeout=settings.ready_timeout, extra=extra,
                                     environ={"PYTHONPERFSUPPORT": "1"} if tool == "perf" else None)
    except runner.StartFailure as exc:
        if tool == "perf":
            _remove_dead_maps(set(glob.glob(_PERF_MAPS)) - maps)
        record.update(status="skipped" if exc.skipped else "failed", reason=exc.reason)
        return record
    base = os.path.join(out_dir, f"profile-{target.name}-{label.replace('@', '-')}")
    try:
        loadgen = runner.start_load(server, label, concurrency, settings, client_cpus)
        runner.await_window(server, loadgen, settings)
        usage_of = metrics.TreeSampler(server.proc.pid)
        usage_of.start()
        sampler = (PerfSampler(server.proc.pid, base, client_cpus) if tool == "perf"
                   else Sampler(server.proc.pid, base + ".txt", client_cpus))
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
    if tool == "py-spy":
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
                 out_dir: str, tool: str = "py-spy") -> list[dict[str, Any]]:
    """A profiled run per (server, workload) of the plan, at its first concurrency, with
    its overhead against that cell's unprofiled median CPU per request."""
    first_conc = min(conc for _, _, conc, _ in order)
    cells = {(target.name, label): target for _, label, conc, target in order
             if conc == first_conc}
    profiles = []
    for (name, label), target in cells.items():
        record = profiled_run(target, label, first_conc, settings, cpus, out_dir, tool)
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
    tools = sorted({p.get("profiler", "py-spy") for p in profiles}) or ["py-spy"]
    parts = [f"Profiles ({', '.join(tools)}, {RATE} samples/s over each extra run; not in "
             "the figures above). Self time: samples whose innermost Python frame is the "
             "function (what it called natively counts for it)."]
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
