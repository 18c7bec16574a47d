"""``python -m bench``: benchmark the zoo side by side, or compare two result sets.

Defaults and why (``--servers all`` must finish in under 10 minutes on a 2-core
machine, ``--quick`` in under 90 s): a run costs warm-up + duration + about
0.5 s of overhead measured on this machine (server start ~0.1 s, load
generator start and connection set-up ~0.15 s, stop, perf, PSS and
bookkeeping), and ~0.6 s more at 1,000 connections (connection set-up, and the
load generator waiting out the per-request timeout of clients a server never
answered). The zoo has 16 user-space servers and four workloads (echo, the page,
a 64 KiB file, the guestbook with a 10 ms backend wait: the series' app, where
the models part ways): 16 x 4 x 3 concurrencies (10, 100, 1000) x 2 repeats =
384 runs; 256 x 1.1 s + 128 x 1.7 s = ~8.5 minutes, with room for a busy
machine, plus a second for Redis and the files (measured: 414 runs, kernel and n/a
rows included, in 7 min 39 s on a quiet 2-core machine). The single-connection column
was dropped to make room for the app workloads (``--concurrency 1,...`` brings
it back), and two repeats give a spread rather than a median of three. Kernel
rows, and n/a rows (a server that cannot serve a workload), cost nothing.
0.5 s at 10k-50k requests/s is 5k-25k samples a run, enough for p99 (p99.9 is
indicative). ``--quick`` is the same four workloads at 100 connections, one
repeat of 0.4 s + 0.1 s warm-up: 64 runs x ~1 s = ~65 s.

Repeats are interleaved round robin: round 1 runs every (workload,
concurrency, server) once, then round 2 does it again, so that a slow minute of
a shared machine lands on all servers rather than on one. Every run starts a
fresh server (see :mod:`bench.runner` for why).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

from bench import (
    aggregate,
    capacity,
    files,
    metrics,
    netns,
    progress,
    redis,
    remote,
    report,
    runner,
    stats,
)
from bench.records import Failure, Run, Status
from servers.argtypes import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    redis_addr,
)
from servers.cli import raise_descriptor_limit

DEFAULTS = {"workloads": "echo,http,file,guestbook", "concurrency": "10,100,1000",
            "duration": 0.5, "warmup": 0.1, "repeat": 2}
QUICK = {"workloads": "echo,http,file,guestbook", "concurrency": "100", "duration": 0.4,
         "warmup": 0.1, "repeat": 1}
# --slo: one closed-loop run and at most --slo-steps (6) open-loop runs per server, each
# warm-up + duration + ~0.5 s: 16 servers x 7 x 1.7 s = ~3.2 minutes for one workload
# (--quick: 7 x 1 s = ~2 minutes), inside the 10 minutes a whole-zoo run may take.
SLO = {"concurrency": "100", "duration": 1.0, "warmup": 0.2, "repeat": 1}
SLO_QUICK = {"concurrency": "100", "duration": 0.4, "warmup": 0.1, "repeat": 1}
ECHO_SIZE = 64
FILE_SIZE = 65536
DEFAULT_WAITS = "10"
RUN_OVERHEAD_S = 0.5
MANY_CONNECTIONS_EXTRA_S = 0.6  # connection set-up and tear-down at >= 1,000
PACKAGES = ("tabulate", "psutil", "matplotlib", "uvloop", "trio", "gevent", "httptools",
            "pytest", "pytest-benchmark")
VM_NOTE = ("figures from an emulated QEMU guest (TCG): compare them only with each other, "
           "never with figures from the host")
# In the guest (--vm), unless flags say otherwise: the kernel servers against c-epoll, and
# echo-connect, where a kthread per connection pays for its creation and CMWQ does not.
VM_SERVERS = "kecho,kecho-kthread,khttpd,c-epoll"
# TCG runs everything ~10x slower: longer windows, and a per-request timeout that 1,000
# connections being set up at once do not run into.
VM_DEFAULTS = {"workloads": "echo,echo-connect,http", "concurrency": "8,100,1000",
               "duration": 1.0, "warmup": 0.3}
VM_QUICK = {"workloads": "echo,echo-connect,http", "duration": 0.6, "warmup": 0.2}
VM_TIMEOUT = 10.0
VM_CPU_NOTE = ("CPU per request: every vCPU's /proc/stat (user, system, irq, softirq) over "
               "the window, less the load generator's and the harness's own CPU")


class UsageError(Exception):
    """A bad flag value: reported with exit status 2."""


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bench`` argument parser (``compare`` is handled before it)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the zoo's servers side by side with the native load generator. "
                    "'python -m bench compare OLD NEW' compares two result sets.",
        epilog=f"Defaults: --workloads {DEFAULTS['workloads']} --concurrency "
               f"{DEFAULTS['concurrency']} --duration {DEFAULTS['duration']} --warmup "
               f"{DEFAULTS['warmup']} --repeat {DEFAULTS['repeat']} (all servers in under 10 "
               f"minutes on 2 cores). --quick: --concurrency {QUICK['concurrency']} --duration "
               f"{QUICK['duration']} --warmup {QUICK['warmup']} --repeat {QUICK['repeat']} "
               "(under 90 s); explicit flags still win.",
    )
    parser.add_argument("--servers", default=None,
                        help=f"all, or NAME,NAME (python -m servers); default all, with --vm "
                             f"{VM_SERVERS}")
    parser.add_argument("--workloads", default=None,
                        help=f"comma list of load generator workloads (default "
                             f"{DEFAULTS['workloads']})")
    parser.add_argument("--concurrency", default=None,
                        help=f"comma list of connection counts (default {DEFAULTS['concurrency']})")
    parser.add_argument("--duration", type=positive_float, default=None,
                        help=f"measured seconds per run (default {DEFAULTS['duration']})")
    parser.add_argument("--warmup", type=non_negative_float, default=None,
                        help=f"unmeasured seconds before each run (default {DEFAULTS['warmup']})")
    parser.add_argument("--repeat", type=positive_int, default=None,
                        help=f"repeats, interleaved round robin (default {DEFAULTS['repeat']})")
    parser.add_argument("--idle", type=non_negative_int, default=0,
                        help="extra silent connections held open during each run")
    parser.add_argument("--rate", type=positive_float, default=None,
                        help="open loop at this total requests/s (default: closed loop)")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson",
                        help="open loop (--rate, --slo): exponential gaps between a "
                             "connection's requests (poisson, the default) or a fixed period")
    parser.add_argument("--seed", type=non_negative_int, default=1,
                        help="open loop, poisson: the arrival generator's seed (default 1)")
    parser.add_argument("--slo", default=None, metavar="PCT=TIME",
                        help="capacity at a latency target, e.g. p99=2ms (p50/p90/p99/p999; "
                             "us, ms or s): the highest open-loop rate each server sustains "
                             f"within it; --concurrency default {SLO['concurrency']}, "
                             f"--duration {SLO['duration']}, --quick "
                             f"{SLO_QUICK['duration']}")
    parser.add_argument("--slo-steps", type=positive_int, default=capacity.DEFAULT_STEPS,
                        help="--slo: open-loop runs per server at most (default "
                             f"{capacity.DEFAULT_STEPS}; plus one closed-loop run)")
    parser.add_argument("--ci", default=None, metavar="PCT",
                        help="add interleaved repeats until every cell's 95%% interval is "
                             "within ±PCT (e.g. 5%%) or --max-repeats is reached")
    parser.add_argument("--max-repeats", type=positive_int, default=stats.DEFAULT_MAX_REPEATS,
                        help="--ci: the most repeats of a cell (default "
                             f"{stats.DEFAULT_MAX_REPEATS})")
    parser.add_argument("--size", type=positive_int, default=None,
                        help=f"echo payload bytes (default {ECHO_SIZE}); file workload: the "
                             f"file's size (default {FILE_SIZE})")
    parser.add_argument("--backend-wait-ms", default=None, metavar="LIST",
                        help="guestbook workloads: comma list of backend waits in ms, each a "
                             f"run of its own (default {DEFAULT_WAITS})")
    parser.add_argument("--sendfile", choices=("on", "off"), default=None,
                        help="file workload: every server sends files by sendfile(2) (on; "
                             "servers that cannot are n/a) or by read+write (off); default: "
                             "each server its own way")
    parser.add_argument("--post-every", type=positive_int, default=20, metavar="N",
                        help="guestbook-post: one POST every N requests of a connection")
    parser.add_argument("--redis", type=redis_addr, default=None, metavar="ADDR",
                        help="guestbook workloads: use this Redis (HOST:PORT or unix:PATH) "
                             "instead of starting a private one")
    parser.add_argument("--pipeline", type=positive_int, default=8,
                        help="depth for the http-pipeline workload")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="pass --workers N to every server")
    parser.add_argument("--timeout", type=positive_float, default=None,
                        help=f"per-request timeout of the load generator, s (default 2; "
                             f"{VM_TIMEOUT:g} with --vm)")
    parser.add_argument("--out", default=None, help="output directory (default results/<time>/)")
    parser.add_argument("--quick", action="store_true", help="a short run (under 90 s)")
    parser.add_argument("--no-perf", action="store_true", help="do not count system calls")
    parser.add_argument("--server-host", default=None, metavar="ssh://[USER@]HOST[:PORT]",
                        help="start each server on this host over ssh (python -m bench.remote "
                             "setup puts the checkout there)")
    parser.add_argument("--client-hosts", default=None, metavar="ssh://H1,ssh://H2",
                        help="run the load generators on these hosts over ssh, sharing the "
                             "connections and the open-loop rate, starting together (clocks "
                             "assumed NTP-synchronised)")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                        help="passed to ssh as -o OPTION (repeatable)")
    parser.add_argument("--remote-dir", default=None,
                        help="the checkout on the remote hosts (default: this checkout's path)")
    parser.add_argument("--host", default=None,
                        help="with remote hosts: the address the server binds and the clients "
                             "reach (default: the --server-host's name)")
    parser.add_argument("--net", choices=("loopback", "veth"), default="loopback",
                        help="single machine: the server and the load generator on loopback "
                             "(default), or in two network namespaces joined by veth pairs "
                             "and a bridge (needs root)")
    parser.add_argument("--vm", action="store_true",
                        help="run the whole benchmark inside the QEMU guest (bench.vm)")
    parser.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host-cores", type=positive_int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true",
                        help="with --vm: the tracing view (tracefs in the guest: workqueue "
                             "latency, kthread start-up, khttpd's hot path, system calls) "
                             "instead of the tables; traced figures stay apart (bench.vm_trace)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--profile", action="store_true",
                        help="after the measured runs, one extra run per server and workload "
                             "under py-spy: a flame graph each and the top functions by self "
                             "time (bench.profile); kept out of the figures")
    parser.add_argument("--profiler", choices=("auto", "py-spy", "perf"), default="auto",
                        help="with --profile: py-spy, or perf with CPython's perf trampoline "
                             "(Python 3.12+); auto: py-spy, else perf (default: %(default)s)")
    return parser


def select_targets(spec: str) -> list[runner.Target]:
    """Registry entries named by ``spec`` ("all" or a comma list), as runner targets."""
    from servers.registry import BY_NAME, ENTRIES

    if spec.strip() == "all":
        entries = list(ENTRIES)
    else:
        names = _csv_list(spec)
        if not names:
            raise UsageError("--servers: no server named")
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise UsageError(f"--servers: unknown server(s) {', '.join(unknown)}; "
                             f"known: {', '.join(BY_NAME)}")
        entries = [BY_NAME[n] for n in dict.fromkeys(names)]
    return [runner.Target(e.name, tuple(e.argv), e.kind, tuple(e.protocols), e.concurrent,
                          e.static_files, bool(e.guestbook), e.max_in_flight, e.sendfile)
            for e in entries]


def resolve_options(options: argparse.Namespace) -> dict[str, Any]:
    """Apply --quick and the defaults; validate lists. Raises UsageError."""
    from bench.loadgen import WORKLOADS

    base = QUICK if options.quick else DEFAULTS
    if options.vm or options.in_vm:
        base = {**base, **(VM_QUICK if options.quick else VM_DEFAULTS)}
    workloads = _csv_list(options.workloads or base["workloads"])
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad or not workloads:
        raise UsageError(f"--workloads: unknown {', '.join(bad) or '(empty)'}; "
                         f"known: {', '.join(WORKLOADS)}")
    try:
        concurrency = [int(c) for c in _csv_list(options.concurrency or base["concurrency"])]
    except ValueError:
        raise UsageError(f"--concurrency: expected integers, got {options.concurrency!r}") from None
    if not concurrency or min(concurrency) < 1:
        raise UsageError("--concurrency: expected positive integers")
    try:
        waits = [float(w) for w in _csv_list(options.backend_wait_ms or DEFAULT_WAITS)]
    except ValueError:
        raise UsageError(f"--backend-wait-ms: expected numbers, got "
                         f"{options.backend_wait_ms!r}") from None
    if not waits or min(waits) < 0:
        raise UsageError("--backend-wait-ms: expected numbers >= 0")
    if options.backend_wait_ms and not any(w.startswith("guestbook") for w in workloads):
        raise UsageError("--backend-wait-ms: no guestbook workload chosen")
    labels = []
    for workload in dict.fromkeys(workloads):
        if workload.startswith("guestbook"):
            labels += [runner.label_for(workload, w) for w in dict.fromkeys(waits)]
        else:
            labels.append(workload)
    slo, ci = None, None
    if options.slo is not None:
        try:
            slo = capacity.parse_slo(options.slo)
        except ValueError as exc:
            raise UsageError(f"--slo: {exc}") from None
        if options.ci or options.rate:
            raise UsageError("--slo chooses the rates itself and repeats nothing: not with "
                             "--rate or --ci")
        base = {**base, **(SLO_QUICK if options.quick else SLO)}
        if not options.concurrency:
            concurrency = [int(c) for c in _csv_list(base["concurrency"])]
    if options.ci is not None:
        try:
            ci = float(options.ci.strip().removesuffix("%"))
        except ValueError:
            raise UsageError(f"--ci: expected a percentage such as 5%, got {options.ci!r}") \
                from None
        if not 0 < ci < 100:
            raise UsageError(f"--ci: expected a percentage in (0, 100), got {options.ci!r}")
        if options.max_repeats < 2:
            raise UsageError("--max-repeats: an interval needs at least 2 repeats")
    return {
        "workloads": labels,
        "backend_waits": list(dict.fromkeys(waits)),
        "concurrency": sorted(set(concurrency)),
        "duration": options.duration or base["duration"],
        "warmup": base["warmup"] if options.warmup is None else options.warmup,
        "repeat": options.repeat or base["repeat"],
        "ci": ci, "max_repeats": options.max_repeats if ci else None,
        "slo": slo, "slo_steps": options.slo_steps if slo else None,
        "arrivals": options.arrivals, "seed": options.seed,
    }


def plan(targets: list[runner.Target], workloads: list[str], concurrency: list[int],
         repeat: int) -> list[tuple[int, str, int, runner.Target]]:
    """Every run in order: round robin over rounds, then workload, concurrency, server."""
    order = []
    for rep in range(repeat):
        for workload in workloads:
            for conc in concurrency:
                for target in targets:
                    if runner.protocol_of(workload) in target.protocols:
                        order.append((rep, workload, conc, target))
    return order


def estimate_run_s(settings: runner.Settings, concurrency: int) -> float:
    extra = MANY_CONNECTIONS_EXTRA_S if concurrency >= 1000 else 0.0
    return settings.warmup + settings.duration + RUN_OVERHEAD_S + extra


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=runner.REPO, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=runner.REPO,
                               timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Machine, kernel, Python and package versions for results.json."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    import psutil

    return {
        "machine": {"hostname": platform.node(), "arch": platform.machine(),
                    "cpu_model": model, "cpus": os.cpu_count(),
                    "memory_bytes": psutil.virtual_memory().total},
        "kernel": f"{platform.system()} {platform.release()} {platform.version()}",
        "python": sys.version, "python_executable": sys.executable, "packages": packages,
        "git": _git_revision(),
    }


def default_out_dir() -> str:
    return os.path.join("results", dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def vm_note(host_cores: int | None) -> str:
    """The header note of a run in the guest: emulation, vCPUs against host cores, CPU."""
    vcpus = os.cpu_count() or 1
    cores = f"{vcpus} vCPUs on {host_cores} host cores" if host_cores else f"{vcpus} vCPUs"
    if host_cores and vcpus > host_cores:
        cores += " (more vCPUs than host cores: they share them, every row is slowed)"
    return f"{VM_NOTE}; {cores}; {VM_CPU_NOTE}"


def run_vm(argv: list[str], options: argparse.Namespace, estimate_s: float) -> int:
    """Re-run this command inside the QEMU guest and show its output."""
    try:
        from bench import vm_qemu
    except ImportError as exc:
        print(f"python -m bench: --vm: bench.vm_qemu cannot be imported ({exc})", file=sys.stderr)
        return 2
    out_dir = os.path.abspath(options.out or default_out_dir())
    if out_dir.split(os.sep)[1:2] in (["tmp"], ["run"], ["dev"], ["proc"], ["sys"]):
        print(f"python -m bench: error: --vm: --out {out_dir}: the guest has its own /tmp and "
              "/run; choose a directory on the shared file system (e.g. under results/)",
              file=sys.stderr)
        return 2
    guest_args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--vm" or arg.startswith("--out="):
            continue
        if arg == "--out":
            skip = True
            continue
        guest_args.append(arg)
    host_cores = os.cpu_count() or 1
    command = [sys.executable, "-m", "bench", *guest_args, "--out", out_dir, "--in-vm",
               "--host-cores", str(host_cores)]
    timeout = 600 + 8 * estimate_s  # TCG runs everything several times slower
    print(f"bench: running in the QEMU guest (timeout {progress.fmt_duration(timeout)}): "
          f"{' '.join(command)}", file=sys.stderr)
    try:
        # as many vCPUs as host cores, and at least two: the load generator gets one
        result = vm_qemu.run_in_guest(command, timeout, smp=max(2, host_cores),
                                      stream=True)
    except Exception as exc:  # VmError and friends: say why, do not trace back
        print(f"python -m bench: --vm: the guest run failed: {exc}", file=sys.stderr)
        return 1
    print(f"bench: guest exit status {result.returncode}; results in {out_dir}", file=sys.stderr)
    return result.returncode


def run(argv: list[str] | None = None) -> int:
    """Parse flags, run the plan, print the tables, write the outputs; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        vm_run = options.vm or options.in_vm
        targets = select_targets(options.servers or (VM_SERVERS if vm_run else "all"))
        resolved = resolve_options(options)
        if options.trace and not vm_run:
            raise UsageError("--trace needs --vm: it reads the guest kernel's tracefs")
        if options.profile and (vm_run or options.server_host or options.client_hosts
                                or options.net != "loopback"):
            raise UsageError("--profile samples the server's processes on this machine: not "
                             "with --vm, remote hosts or --net veth")
        if options.profiler != "auto" and not options.profile:
            raise UsageError("--profiler chooses the sampler of --profile: give --profile too")
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 2
    settings = runner.Settings(
        duration=resolved["duration"], warmup=resolved["warmup"], idle=options.idle,
        rate=options.rate, size=options.size or ECHO_SIZE, pipeline=options.pipeline,
        workers=options.workers,
        timeout=options.timeout or (VM_TIMEOUT if options.vm or options.in_vm else 2.0),
        file_size=options.size or FILE_SIZE, post_every=options.post_every,
        sendfile=options.sendfile, guest_cpu=options.in_vm, arrivals=options.arrivals,
        seed=options.seed,
        # an emulated guest starts Python in seconds, not milliseconds
        ready_timeout=120.0 if options.in_vm else 10.0, slack=120.0 if options.in_vm else 15.0,
    )
    order = plan(targets, resolved["workloads"], resolved["concurrency"], resolved["repeat"])
    estimate = sum(estimate_run_s(settings, conc) for _, label, conc, target in order
                   if not runner.why_not_app(target, label, options.sendfile))  # n/a: free
    estimate *= 1 + (resolved["slo_steps"] or 0)  # --slo: a search per cell
    if options.vm:
        return run_vm(argv, options, estimate)
    if not order:
        print("python -m bench: error: no server speaks the chosen workloads", file=sys.stderr)
        return 2
    note = vm_note(options.host_cores) if options.in_vm else ""
    out_dir = options.out or default_out_dir()
    raise_descriptor_limit()
    if options.trace:
        from bench import vm_trace

        return vm_trace.run(order, settings, out_dir, note)
    with contextlib.ExitStack() as stack:
        try:
            placement = remote_placement(stack, options, resolved["workloads"])
        except UsageError as exc:
            parser.print_usage(sys.stderr)
            print(f"python -m bench: error: {exc}", file=sys.stderr)
            return 2
        except (remote.RemoteError, netns.NetnsError, OSError) as exc:
            print(f"python -m bench: error: {exc}", file=sys.stderr)
            return 1
        settings = dataclasses.replace(settings, remote=placement)
        try:
            updates, app_info = app_resources(stack, resolved, options.redis, settings.file_size)
        except (redis.RedisError, OSError) as exc:
            print(f"python -m bench: error: the app workloads cannot run: {exc}",
                  file=sys.stderr)
            return 1
        settings = dataclasses.replace(settings, **updates)
        return _run_plan(argv, options, targets, resolved, settings, order, estimate, note,
                         out_dir, app_info)


def remote_placement(stack: contextlib.ExitStack, options: argparse.Namespace,
                     workloads: list[str]) -> remote.Placement | None:
    """The hosts of --server-host, --client-hosts or --net veth (probed), or None."""
    try:
        placement = remote.from_options(
            stack, server_host=options.server_host, client_hosts=options.client_hosts,
            ssh_options=options.ssh_option, remote_dir=options.remote_dir, host=options.host,
            net=options.net, client_cpus=runner.split_cpus()[1])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if placement and options.in_vm:
        raise UsageError("--server-host, --client-hosts and --net veth cannot run in the "
                         "QEMU guest")
    if placement and options.redis is None and any(w.startswith("guestbook")
                                                   for w in workloads):
        raise UsageError("guestbook workloads with remote hosts or --net veth need --redis "
                         "HOST:PORT, a Redis the server host reaches")
    for host in placement.hosts if placement else []:
        print(f"bench: {host['role']} host {host['host']}: {host.get('cpu_model')}, "
              f"{host.get('cpus')} CPUs, kernel {host.get('release')}", file=sys.stderr)
    return placement


def app_resources(stack: contextlib.ExitStack, resolved: dict[str, Any],
                  own_redis: redis.RedisAddr | None, file_size: int,
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the app workloads need, for the length of ``stack``: the file root, and a
    Redis (the user's, or a private one) with each backend wait calibrated on it."""
    updates: dict[str, Any] = {}
    info: dict[str, Any] = {}
    bases = {runner.split_label(label)[0] for label in resolved["workloads"]}
    if "file" in bases:
        root = stack.enter_context(tempfile.TemporaryDirectory(prefix="tcpzoo-files-"))
        files.make_root(root, (file_size,))
        updates["file_root"] = root
        info["file_size"] = file_size
    if bases & {"guestbook", "guestbook-post"}:
        waits = resolved["backend_waits"]
        if own_redis is not None:
            addr = own_redis
            info["redis"] = f"{addr} (given with --redis)"
            warning = redis.hz_warning(addr, min((w for w in waits if w > 0), default=0))
            if warning:
                print(f"bench: WARNING: {warning}", file=sys.stderr)
                info["redis_warning"] = warning
        else:
            private = stack.enter_context(redis.PrivateRedis())
            addr = private.addr
            info["redis"] = f"private redis-server, hz {private.hz}, at {addr}"
        measured = tuple((w, redis.calibrate_wait(addr, w)) for w in waits)
        for asked, got in measured:
            if asked:
                print(f"bench: backend wait {asked:g} ms asked, {got:.1f} ms measured (median "
                      f"of 8 BLPOPs on the idle Redis); Little's-law limits use the measured "
                      "value", file=sys.stderr)
        updates.update(redis=str(addr), waits_measured=measured)
        info["backend_wait"] = [{"asked_ms": a, "measured_ms": m} for a, m in measured]
    return updates, info


def _run_plan(argv: list[str], options: argparse.Namespace, targets: list[runner.Target],
              resolved: dict[str, Any], settings: runner.Settings,
              order: list[tuple[int, str, int, runner.Target]], estimate: float, note: str,
              out_dir: str, app_info: dict[str, Any]) -> int:
    server_cpus, client_cpus = runner.split_cpus()
    if server_cpus != client_cpus:
        os.sched_setaffinity(0, client_cpus)  # keep the harness off the server's cores
    perf_problem = None if options.no_perf else metrics.perf_available()
    use_perf = not options.no_perf and perf_problem is None
    print(f"bench: {len(targets)} servers x {len(resolved['workloads'])} workloads x "
          f"{len(resolved['concurrency'])} concurrencies x {resolved['repeat']} repeats = "
          f"{len(order)} runs of {settings.warmup:g}+{settings.duration:g} s; estimated "
          f"{progress.fmt_duration(estimate)} (servers skipped here finish sooner)",
          file=sys.stderr)
    calls = ("counted with perf" if use_perf
             else f"not counted ({perf_problem or '--no-perf'})")
    print(f"bench: server cores {server_cpus}, load generator cores {client_cpus}; "
          f"system calls {calls}", file=sys.stderr)
    meta: dict[str, Any] = {
        **machine_info(), "started": dt.datetime.now(dt.UTC).isoformat(),
        "argv": argv, "settings": {**resolved, "idle": settings.idle, "rate": settings.rate,
                                   "size": settings.size, "pipeline": settings.pipeline,
                                   "workers": settings.workers, "timeout": settings.timeout,
                                   "sendfile": settings.sendfile},
        "servers": [t.name for t in targets], "server_cpus": server_cpus, "apps": app_info,
        "client_cpus": client_cpus, "perf": "perf stat raw_syscalls:sys_enter" if use_perf
        else f"not counted ({perf_problem or '--no-perf'})", "header_note": note,
        "estimate_s": estimate, "in_vm": options.in_vm,
        "net": options.net, "hosts": settings.remote.hosts if settings.remote else [],
    }
    runs_planned = len(order) * (1 + (resolved["slo_steps"] or 0))  # --slo: a search each
    bar = progress.Progress(runs_planned, estimate / max(runs_planned, 1),
                            enabled=not options.quiet, lines=options.in_vm)
    searches = None
    if resolved["slo"]:
        key, target_us = resolved["slo"]
        runs, searches = capacity.run_searches(
            order, settings, (server_cpus, client_cpus), use_perf, bar, key, target_us,
            resolved["slo_steps"])
        complete = len(runs) == len(order)
    elif resolved["ci"]:
        runs, complete = execute_to_ci(order, settings, (server_cpus, client_cpus), use_perf,
                                       bar, resolved["ci"], resolved["max_repeats"])
    else:
        runs = execute(order, settings, (server_cpus, client_cpus), use_perf, bar)
        complete = len(runs) == len(order)
    meta["finished"] = dt.datetime.now(dt.UTC).isoformat()
    meta["wall_s"] = (sum(r.wall_s for r in runs)
                      + sum(c["wall_s"] for c in searches or []))
    meta["complete"] = complete
    files = report.write_outputs(out_dir, runs, meta, searches)
    print(report.console_report(aggregate.aggregate(runs, resolved["ci"]), note, searches))
    if options.profile and meta["complete"]:
        files += _profiles(order, runs, settings, (server_cpus, client_cpus), out_dir,
                           options.profiler)
    print(f"\nbench: {len(runs)} runs in {progress.fmt_duration(meta['wall_s'])}; wrote "
          f"{', '.join(files)} to {out_dir}", file=sys.stderr)
    return 0 if meta["complete"] else 130


def execute_to_ci(order: list[tuple[int, str, int, runner.Target]], settings: runner.Settings,
                  cpus: tuple[list[int], list[int]], use_perf: bool, bar: progress.Progress,
                  target_pct: float, max_repeats: int) -> tuple[list[Run], bool]:
    """--ci: the plan, then further rounds of only the cells whose requests/s interval is
    wider than ±``target_pct`` %, each round interleaved like the first, until every cell
    is within it or has ``max_repeats`` repeats. Returns (runs, finished)."""
    runs = execute(order, settings, cpus, use_perf, bar)
    if len(runs) < len(order):
        return runs, False
    cells = list(dict.fromkeys((w, c, t) for _, w, c, t in order))
    rounds = 1 + max(rep for rep, *_ in order)
    while True:
        values: dict[tuple[str, str, int], list[float]] = {}
        for r in runs:
            if r.usable:
                values.setdefault(r.cell, []).append(r.requests_per_s)
        counts: dict[tuple[str, str, int], int] = {}
        for r in runs:
            counts[r.cell] = counts.get(r.cell, 0) + 1
        # cells that measure nothing (n/a, skipped, failing) get no more repeats
        more = [(rounds, w, c, t) for w, c, t in cells
                if (t.name, w, c) in values and counts[(t.name, w, c)] < max_repeats
                and stats.needs_more(values[(t.name, w, c)], target_pct,
                                     max_repeats=max_repeats)]
        if not more:
            return runs, True
        bar.total += len(more)
        bar.note(f"bench: --ci {target_pct:g}%: round {rounds + 1} for {len(more)} cells")
        added = execute(more, settings, cpus, use_perf, bar)
        runs += added
        if len(added) < len(more):
            return runs, False
        rounds += 1


def _profiles(order: list[tuple[int, str, int, runner.Target]], runs: list[Run],
              settings: runner.Settings, cpus: tuple[list[int], list[int]],
              out_dir: str, profiler: str) -> list[str]:
    """--profile: the profiled runs, their tables printed; the files written."""
    from bench import profile

    tool, note = profile.choose(profiler)
    if tool is None:
        print(f"bench: --profile: not profiling ({note}); the figures above stand",
              file=sys.stderr)
        return []
    if note:
        print(f"bench: --profile: {note}", file=sys.stderr)
    profiles = profile.run_profiles(order, runs, settings, cpus, out_dir, tool)
    print("\n" + profile.profile_report(profiles))
    return profile.write(profiles, out_dir)


def execute(order: list[tuple[int, str, int, runner.Target]], settings: runner.Settings,
            cpus: tuple[list[int], list[int]], use_perf: bool,
            bar: progress.Progress, reruns: int | None = None) -> list[Run]:
    """Run the plan; a skipped server is not retried, nor one that failed to start twice.

    A run whose halves disagree, or whose server core was busy with other processes
    (``unstable``, bench.stats), is measured once more and the second run kept; at most
    ``reruns`` times (default a tenth of the plan: on a busy machine the default run
    stays within its 10 minutes, ~50 s more at most)."""
    left = len(order) // 10 if reruns is None else reruns
    runs: list[Run] = []
    gave_up: dict[str, tuple[Status, str, Failure | None]] = {}
    start_failures: dict[str, int] = {}
    try:
        for rep, workload, conc, target in order:
            label = f"round {rep + 1}: {target.name} {workload} c={conc}"
            if target.name in gave_up:
                record = runner.empty_record(target, workload, conc, rep)
                record.status, record.reason, record.failure = gave_up[target.name]
                runs.append(record)
                bar.finish(0.0, ran=False)
                continue
            bar.start(label)
            record = runner.measure(target, workload, conc, settings, rep, cpus, use_perf)
            if record.unstable and left > 0:
                left -= 1
                bar.note(f"bench: {label}: {record.unstable}; measured once more")
                first = record
                record = runner.measure(target, workload, conc, settings, rep, cpus, use_perf)
                record.rerun_because = first.unstable
                record.wall_s += first.wall_s
            runs.append(record)
            bar.finish(record.wall_s)
            if record.status == Status.SKIPPED:
                gave_up[target.name] = (Status.SKIPPED, record.reason, None)
                bar.note(f"bench: {target.name}: skipped: {record.reason}")
            elif record.status == Status.NA:
                pass  # in the tables as n/a, with the reason
            elif record.failure == Failure.START:
                start_failures[target.name] = start_failures.get(target.name, 0) + 1
                if start_failures[target.name] >= 2:
                    gave_up[target.name] = (Status.FAILED, f"{record.reason} (not retried)",
                                            Failure.START)
                bar.note(f"bench: {label}: failed: {record.reason}")
            else:
                start_failures[target.name] = 0
                if record.status not in (Status.OK, Status.ERRORS):
                    bar.note(f"bench: {label}: {record.status}: {record.reason[:150]}")
    except KeyboardInterrupt:
        bar.note("bench: interrupted; writing what was measured")
    finally:
        bar.close()
    return runs


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench`` (dispatches ``compare``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "compare":
            from bench import compare

            return compare.main(args[1:])
        return run(args)
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
