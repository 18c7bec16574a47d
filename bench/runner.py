"""One measured run: start a server, pin it, load it, measure it, stop it.

:func:`measure` is the unit the harness repeats. For one server, workload and
concurrency it

1. starts the server through its registry argv (``python <argv> --proto P
   --port 0``) on the server's cores, and waits (bounded) for the readiness
   line ``listening on HOST:PORT`` (:mod:`bench.server_process`); a server that
   says this machine cannot run it (servers.backend.exit_unavailable: a kernel
   module that cannot be loaded here, no io_uring) is "skipped" with its reason;
2. starts the native load generator as a subprocess on the other cores
   (``python -m bench.loadgen ... --warmup W -d D --json``), with one client
   thread per client core;
3. once the warm-up is over, opens a measurement window on the server's whole
   process tree (CPU, context switches, peak RSS, and system calls through
   perf) that closes shortly before the load generator's own window ends;
4. stops the server with SIGTERM and checks that it exits with status 0 within
   2 s (otherwise the tree is killed and the run says so).

Every wait is bounded, so a server that hangs, crashes or never answers gives
a failed run with a reason, never a hung harness.

The app workloads start the server with what they need: ``file`` with ``--root``
(the generated files), ``guestbook`` and ``guestbook-post`` with ``--redis`` and
``--backend-wait-ms W``. Their label carries the wait (``guestbook@10ms``); a server
that cannot serve a workload (no guestbook in the kernel, no files in c-epoll) gets
an ``n/a`` record with the reason instead of a silent gap. A fresh server process is
started for every run: each repeat is an independent sample (start-up effects
included in the spread, nothing carried over from an earlier concurrency or
from a crash), only one server is alive at any time, and start-up costs about
0.1 s, a small price next to the run itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from bench import metrics, records, server_process, stats
from bench.records import Failure, Run, Status
from bench.server_process import StartFailure

READY_TIMEOUT = 10.0
LOADGEN_START_S = 0.05  # no load generator connects sooner (python start-up)
CONNECTED_TO_CLOCK_S = 0.02  # from its first connection to the start of its warm-up
WINDOW_TAIL_S = 0.2  # the window closes this long before the load generator stops
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Settings:
    """What every run of one harness invocation shares.

    ``redis`` is the Redis address passed to servers for the guestbook workloads,
    ``waits_measured`` pairs each backend wait asked (ms) with the median a BLPOP of
    it took on that Redis; ``file_root`` holds the files of the file workload, whose
    size is ``file_size``.
    """

    duration: float = 1.0
    warmup: float = 0.25
    idle: int = 0
    rate: float | None = None
    arrivals: str = "poisson"  # open loop: the arrival process, and its seed (bench.loadgen)
    seed: int = 1
    size: int = 64
    pipeline: int = 1
    workers: int | None = None
    timeout: float = 2.0
    server_args: tuple[str, ...] = ()
    ready_timeout: float = 10.0  # for the readiness line and the load generator's connections
    slack: float = 15.0  # beyond warm-up + duration + timeout before a load generator is killed
    redis: str | None = None
    # bench.remote.Placement: the server and the load generators on other hosts (or in
    # network namespaces, --net veth); None: both here, on loopback
    remote: Any = None
    waits_measured: tuple[tuple[float, float], ...] = ()
    file_root: str | None = None
    file_size: int = 65536
    post_every: int = 20
    sendfile: str | None = None  # file workload: "on" or "off" for every server; None: each its own
    # In the QEMU guest: CPU per request from every CPU's /proc/stat over the window, less
    # the load generator's and the harness's own CPU, for every row (kernel ones too).
    guest_cpu: bool = False

    def measured_wait(self, wait_ms: float) -> float | None:
        return dict(self.waits_measured).get(wait_ms)


@dataclass(frozen=True)
class Target:
    """How to start one server: a name, the argv after ``python``, and its kind."""

    name: str
    argv: tuple[str, ...]
    kind: str = "python"
    protocols: tuple[str, ...] = ("echo", "http")
    concurrent: bool = True
    static_files: bool = True
    guestbook: bool = False
    # The most requests it has in flight at once whatever the connections (iterative: 1,
    # a thread pool: its threads); 0: as many as connections.
    max_in_flight: int = 0
    sendfile: bool = False  # can send files with sendfile(2) (--sendfile on)


APP_WORKLOADS = ("file", "guestbook", "guestbook-post")


def split_label(label: str) -> tuple[str, float | None]:
    """``guestbook@10ms`` -> ("guestbook", 10.0); ``http`` -> ("http", None)."""
    workload, sep, wait = label.partition("@")
    if not sep:
        return workload, None
    return workload, float(wait.removesuffix("ms"))


def label_for(workload: str, wait_ms: float | None) -> str:
    return workload if wait_ms is None else f"{workload}@{wait_ms:g}ms"


def why_not_app(target: Target, label: str, sendfile: str | None = None) -> str:
    """Why ``target`` cannot serve the workload of ``label``; "" when it can."""
    workload, _ = split_label(label)
    where = "the kernel" if target.kind == "kernel" else target.name
    if workload == "file" and not target.static_files:
        return f"n/a: no static files in {where}"
    if workload == "file" and sendfile == "on" and not target.sendfile:
        return f"n/a: {target.name} sends files by read+write"
    if workload in ("guestbook", "guestbook-post") and not target.guestbook:
        return f"n/a: no guestbook in {where}"
    return ""


def app_args(target: Target, label: str, settings: Settings) -> tuple[list[str] | None, str]:
    """The server flags a workload needs, or (None, why this server cannot run it)."""
    why = why_not_app(target, label, settings.sendfile)
    if why:
        return None, why
    workload, wait = split_label(label)
    if workload == "file":
        assert settings.file_root is not None
        switch = ["--sendfile", settings.sendfile] if settings.sendfile else []
        return ["--root", settings.file_root, *switch], ""
    if workload in ("guestbook", "guestbook-post"):
        assert settings.redis is not None
        return ["--redis", settings.redis, "--backend-wait-ms", f"{wait or 0:g}"], ""
    return [], ""


def littles_limit(target: Target, connections: int, wait_ms: float | None) -> float | None:
    """requests/s no server can beat with ``connections`` clients each waiting W ms:
    min(connections, requests in flight the model allows) / W."""
    if not wait_ms:
        return None
    in_flight = connections if not target.max_in_flight else min(connections,
                                                                 target.max_in_flight)
    return in_flight / (wait_ms / 1000)


def protocol_of(workload: str) -> str:
    """The server protocol a load generator workload (or its label) speaks."""
    return "echo" if workload.startswith("echo") else "http"


def split_cpus() -> tuple[list[int], list[int]]:
    """(server cores, client cores): halves of this process's CPUs; both all CPUs on one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


# A started server (bench.server_process).
Server = server_process.ServerProcess


def start_server(
    target: Target,
    protocol: str,
    settings: Settings,
    cpus: list[int] | None,
    ready_timeout: float = READY_TIMEOUT,
    extra: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Server:
    """Start ``target`` and wait for its readiness line; raise StartFailure otherwise.
    ``environ``: variables added to the server's environment."""
    argv = [sys.executable, *target.argv, "--proto", protocol, "--port", "0"]
    if settings.workers:
        argv += ["--workers", str(settings.workers)]
    argv += list(settings.server_args) + list(extra or [])
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(environ or {})
    return server_process.start(argv, ready_timeout=ready_timeout, cpus=cpus, cwd=REPO,
                                env=env, name=f"bench-{target.name}")


def loadgen_argv(
    host: str, port: int, workload: str, connections: int, settings: Settings,
    threads: int, *, duration: float | None = None, requests: int | None = None,
    warmup: float | None = None,
) -> list[str]:
    """The command line of one load generator run (JSON on stdout)."""
    workload, _ = split_label(workload)
    size = settings.file_size if workload == "file" else settings.size
    argv = [
        sys.executable, "-m", "bench.loadgen", "--target", f"{host}:{port}",
        "--workload", workload, "-c", str(connections), "--threads", str(threads),
        "--size", str(size), "--timeout", f"{settings.timeout:g}", "--json",
    ]
    if workload == "guestbook-post":
        argv += ["--post-every", str(settings.post_every)]
    if duration is not None:
        argv += ["-d", f"{duration:g}"]
    if requests is not None:
        argv += ["--requests", str(requests)]
    wu = settings.warmup if warmup is None else warmup
    if wu > 0:
        argv += ["--warmup", f"{wu:g}"]
    if settings.rate:
        argv += ["--rate", f"{settings.rate:g}", "--arrivals", settings.arrivals,
                 "--seed", str(settings.seed)]
    if settings.idle:
        argv += ["--idle", str(settings.idle)]
    if workload == "http-pipeline":
        argv += ["--pipeline", str(settings.pipeline)]
    return argv


def start_loadgen(argv: list[str], cpus: list[int] | None) -> subprocess.Popen[str]:
    """Start the load generator pinned to ``cpus``; stdout is its JSON result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        server_process.pinned(argv, cpus), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True,
    )


class LoadgenOutcome(NamedTuple):
    """A finished load generator: its result, or None with why not and the status that
    gives the run (timeout when it had to be killed, failed otherwise)."""

    result: dict[str, Any] | None
    problem: str
    status: Status


def finish_loadgen(proc: subprocess.Popen[str], timeout: float) -> LoadgenOutcome:
    """Wait (bounded) for the load generator; (result, "", ok) or (None, why not, status)."""
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return LoadgenOutcome(
            None, f"load generator did not finish within {timeout:.0f} s (killed)",
            Status.TIMEOUT)
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-2:]) or "no message"
        return LoadgenOutcome(
            None, f"load generator failed (status {proc.returncode}): {tail[:200]}",
            Status.FAILED)
    try:
        return LoadgenOutcome(json.loads(out.strip().splitlines()[-1]), "", Status.OK)
    except (ValueError, IndexError):
        return LoadgenOutcome(None, f"load generator printed no JSON: {out[-200:]!r}",
                              Status.FAILED)


def error_reason(errors: dict[str, int]) -> str:
    """'reset 12, timeout 3' from an error count dict."""
    return ", ".join(f"{kind} {count}" for kind, count in errors.items() if count)


def empty_record(target: Target, workload: str, concurrency: int, repeat: int) -> Run:
    """A run record with nothing measured (status failed until the run says otherwise)."""
    return Run(server=target.name, workload=workload, concurrency=concurrency, repeat=repeat)


def measure(
    target: Target,
    workload: str,
    concurrency: int,
    settings: Settings,
    repeat: int = 0,
    cpus: tuple[list[int], list[int]] | None = None,
    use_perf: bool = True,
) -> Run:
    """Run ``workload`` at ``concurrency`` against a fresh ``target``; one run record."""
    began = time.monotonic()
    record = empty_record(target, workload, concurrency, repeat)
    server_cpus, client_cpus = cpus or split_cpus()
    extra, why_not = app_args(target, workload, settings)
    if extra is None:
        record.status, record.reason = Status.NA, why_not
        return record
    _, wait = split_label(workload)
    if wait is not None:
        measured = settings.measured_wait(wait)
        record.backend_wait_ms, record.backend_wait_measured_ms = wait, measured
        record.littles_limit = littles_limit(target, concurrency, measured or wait)
    try:
        start = settings.remote.start_server if settings.remote else start_server
        server = start(target, protocol_of(workload), settings, server_cpus,
                       ready_timeout=settings.ready_timeout, extra=extra)
    except StartFailure as exc:
        record.status = Status.SKIPPED if exc.skipped else Status.FAILED
        record.failure = None if exc.skipped else Failure.START
        record.reason = exc.reason
        record.wall_s = time.monotonic() - began
        return record
    try:
        load = settings.remote.load_and_measure if settings.remote else _load_and_measure
        load(server, target, workload, concurrency, settings, client_cpus,
             use_perf, record, server_cpus if server_cpus != client_cpus else None)
    finally:
        outcome = server.stop()
        record.server_exit = outcome
        if outcome != "clean" and record.status in (Status.OK, Status.ERRORS):
            record.status = Status.UNCLEAN
            record.reason = "; ".join(r for r in (f"server {outcome}", record.reason) if r)
    record.wall_s = time.monotonic() - began
    return record


def start_load(server: Server, workload: str, concurrency: int, settings: Settings,
               client_cpus: list[int]) -> subprocess.Popen[str]:
    """Start the load generator for one run against ``server``, on ``client_cpus``."""
    argv = loadgen_argv(server.host, server.port, workload, concurrency, settings,
                        threads=max(1, len(client_cpus)), duration=settings.duration)
    return start_loadgen(argv, client_cpus)


def await_window(server: Server, loadgen: subprocess.Popen[str], settings: Settings) -> None:
    """Return when the measured window opens. The load generator's clock starts when it
    has connected: wait for its first connection (bounded by ``ready_timeout``), then
    for the warm-up."""
    time.sleep(LOADGEN_START_S)
    give_up = time.monotonic() + settings.ready_timeout
    while (metrics.established(server.port) == 0 and loadgen.poll() is None
           and server.alive() and time.monotonic() < give_up):
        time.sleep(0.01)
    time.sleep(settings.warmup + CONNECTED_TO_CLOCK_S)


def window_span(settings: Settings) -> float:
    """How long the server is measured: the run less its tail, at least half of it."""
    return max(settings.duration - WINDOW_TAIL_S, settings.duration * 0.5)


def _window(
    server: Server, loadgen: subprocess.Popen[str], settings: Settings, use_perf: bool,
    server_cpus: list[int] | None = None, client_cpus: list[int] | None = None,
    whole: bool = False,
) -> tuple[metrics.TreeUsage, tuple[int, float] | None, float | None]:
    """Wait out the warm-up, then measure the server tree until the window closes."""
    sampler = metrics.TreeSampler(server.proc.pid, cpus=server_cpus, other_cpus=client_cpus,
                                  subtract_pids=(loadgen.pid, os.getpid()) if whole else None)
    counter: metrics.SyscallCounter | None = None
    await_window(server, loadgen, settings)
    span = window_span(settings)
    opened = sampler.start()
    try:
        if use_perf:
            counter = metrics.SyscallCounter(opened.pids)
            counter.start()
        died_at = None
        deadline = time.monotonic() + span
        while time.monotonic() < deadline:
            if not server.alive():
                died_at = time.monotonic()
                break
            if loadgen.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        syscalls = counter.stop() if counter else None
        usage = sampler.stop()
    return usage, syscalls, died_at


def _load_and_measure(
    server: Server, target: Target, workload: str, concurrency: int, settings: Settings,
    client_cpus: list[int], use_perf: bool, record: Run,
    server_cpus: list[int] | None = None,
) -> None:
    started = time.monotonic()
    loadgen = start_load(server, workload, concurrency, settings, client_cpus)
    try:
        usage, syscalls, died_at = _window(server, loadgen, settings, use_perf, server_cpus,
                                           client_cpus if server_cpus else None,
                                           settings.guest_cpu)
    except BaseException:
        if loadgen.poll() is None:
            os.killpg(loadgen.pid, signal.SIGKILL)
            loadgen.wait()
        raise
    bound = (settings.warmup + settings.duration + settings.timeout + settings.slack
             + settings.ready_timeout)
    result, problem, status = finish_loadgen(loadgen, started + bound - time.monotonic())
    if result is None:
        record.reason, record.status, record.failure = problem, status, Failure.LOADGEN
        return
    fill_record(record, result, usage, syscalls, died_at, server, target, workload, settings,
                server_cpus, client_cpus)


def fill_record(
    record: Run, result: dict[str, Any], usage: metrics.TreeUsage,
    syscalls: tuple[int, float] | None, died_at: float | None, server: Any, target: Target,
    workload: str, settings: Settings, server_cpus: list[int] | None, client_cpus: list[int],
) -> None:
    """The run record from the load generator's result and the server's window."""
    lat = result["latency_us"]
    rps = float(result["requests_per_s"])
    record.requests, record.requests_per_s = result["requests"], rps
    record.latency_us = {key: lat.get(key) for key in records.LATENCY_KEYS}
    record.latency_mean_us = lat.get("mean")
    record.errors, record.errors_total = dict(result["errors"]), result["errors_total"]
    record.duration_s = result["duration_s"]
    record.client_cpu_util = result["client_cpu_util"]
    record.client_bound = records.client_bound(result["client_cpu_util"])
    record.window_s = usage.window_s
    record.server_rss_bytes, record.server_pss_bytes = usage.peak_rss, usage.pss
    record.bytes_received, record.halves = result.get("bytes_received"), result.get("halves")
    if split_label(workload)[0] == "file" and result["duration_s"]:
        record.mb_per_s = result["bytes_received"] / result["duration_s"] / 1e6
    if record.littles_limit:
        record.littles_share = rps / record.littles_limit
    served = rps * usage.window_s
    # a kernel server's work on its core (kworkers, softirq) cannot be told from others'
    if usage.cores_busy_s is not None and server_cpus and target.kind != "kernel":
        capacity = usage.window_s * len(server_cpus)
        record.foreign_cpu_util = max(usage.cores_busy_s - usage.cpu_s, 0.0) / capacity
    if usage.other_busy_s is not None and client_cpus:
        # everything on the load generator's cores (it, the harness, other work): busy
        # enough, the load generator may have been starved even if its own share is small
        record.client_core_busy = usage.other_busy_s / (usage.window_s * len(client_cpus))
    # in-kernel work belongs to no process of the tree; in the guest every row is
    # measured the same way, from all CPUs
    cpu_s = usage.whole_cpu_s if usage.whole_cpu_s is not None and served > 0 else (
        usage.cpu_s if target.kind != "kernel" else None)
    if target.kind != "kernel":
        record.ctx_voluntary, record.ctx_involuntary = usage.voluntary, usage.involuntary
        if served > 0:
            record.ctx_per_req = (usage.voluntary + usage.involuntary) / served
    if cpu_s is not None:
        record.server_cpu_s, record.server_cpu_util = cpu_s, cpu_s / usage.window_s
        if served > 0:
            record.server_cpu_s_per_10k = cpu_s / served * 1e4
            record.cpu_us_per_req = cpu_s / served * 1e6
        if record.mb_per_s:
            record.cpu_us_per_mb = cpu_s / (record.mb_per_s * usage.window_s) * 1e6
    if syscalls is not None and target.kind != "kernel":  # kthreads make no system calls
        count, window = syscalls
        record.syscalls = count
        if rps > 0:
            record.syscalls_per_req = count / (rps * window)
    if died_at is not None or not server.alive():
        code = server.exit_code()
        record.status, record.failure = Status.FAILED, Failure.DIED
        record.reason = f"server died during the run ({server_process.exit_text(code or 0)})"
        if result["errors_total"]:
            record.reason += f"; errors: {error_reason(result['errors'])}"
        return
    if result["requests"] == 0:
        record.status, record.failure = Status.FAILED, Failure.NO_ANSWER
        record.reason = "no request completed" + (
            f"; errors: {error_reason(result['errors'])}" if result["errors_total"] else "")
        return
    record.idle_open = result.get("idle_open")
    record.unstable = (stats.halves_verdict(record.halves)
                       or stats.neighbour_verdict(record.foreign_cpu_util))
    dropped = settings.idle - (result.get("idle_open") or 0) if settings.idle else 0
    if result["errors_total"] or dropped > 0:
        record.status = Status.ERRORS
        record.reason = "; ".join(r for r in (
            error_reason(result["errors"]),
            f"{dropped} of {settings.idle} idle connections closed by the server"
            if dropped > 0 else "") if r)
        return
    record.status = Status.OK
