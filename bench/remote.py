"""The server on one host, the load from others: hosts reached with OpenSSH.

Harness side:

* :func:`parse_url` reads ``ssh://[USER@]HOST[:PORT]``; :class:`SshHost` turns a
  command into ``ssh -o OPT... -p PORT USER@HOST -- 'cd DIR && exec CMD'`` (the
  checkout lives in the same directory on every host unless ``--remote-dir`` says
  otherwise). :class:`NetnsHost` runs a command in a network namespace of this
  machine (``--net veth``), :class:`LocalHost` here.
* :class:`Placement` is what the runner asks when the server or the load is
  elsewhere (``Settings.remote``): it starts the server on the server host through
  :mod:`bench.remote_server` (a wrapper that also stops it when the session is lost),
  splits the connections and the open-loop rate between the client hosts, starts one
  load generator on each with ``--start-at`` the same CLOCK_REALTIME instant (real
  hosts: their clocks are assumed NTP-synchronised, a few ms apart at most), measures
  the server with :mod:`bench.remote_metrics` where it runs, and merges the load
  generators' histograms exactly (:func:`bench.loadgen.merge`).

``python -m bench.remote setup [--ssh-option O] [--remote-dir D] ssh://HOST...``
copies this checkout (tracked and untracked, not ignored, files: ``git ls-files``,
through ``tar`` over ``ssh``) to each host and runs ``./zoo setup`` there;
``python -m bench.remote info`` prints the host's kernel, CPU and network namespace.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from bench import loadgen, remote_server, runner, server_process
from bench.records import Failure, Run, Status, client_bound
from bench.remote_metrics import from_json, window_at

START_MARGIN_MIN_S = 0.3
URL_RE = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\[\]\s]+)"
                    r"(?::(?P<port>[0-9]{1,5}))?/?$")


class RemoteError(Exception):
    """A remote host could not be used; the message says which and why."""


@dataclass(frozen=True)
class SshUrl:
    """``ssh://[USER@]HOST[:PORT]``, parsed."""

    host: str
    user: str | None = None
    port: int | None = None

    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{host}" + (f":{self.port}" if self.port else "")


def parse_url(text: str) -> SshUrl:
    """Parse ``ssh://[USER@]HOST[:PORT]``; ValueError with the expected form otherwise."""
    match = URL_RE.match(text.strip())
    port = int(match["port"]) if match and match["port"] else None
    if not match or (port is not None and not 0 < port < 65536):
        raise ValueError(f"expected ssh://[USER@]HOST[:PORT], got {text!r}")
    return SshUrl(match["host"].strip("[]"), match["user"], port)


class Host:
    """Where commands run: ``argv(command)`` is the local command line that runs
    ``command`` (relative to the checkout) there."""

    label = "local"
    python = sys.executable
    same_machine = True  # shares this machine's CPUs (pin the server and clients apart)

    def argv(self, command: list[str]) -> list[str]:
        return command


class LocalHost(Host):
    """This machine, in this network namespace."""


class NetnsHost(Host):
    """A network namespace of this machine (``ip netns exec``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = f"netns:{name}"

    def argv(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]


class SshHost(Host):
    """A host reached with ``ssh``; the checkout (with its .venv) is in ``remote_dir``.

    :meth:`open` starts one master connection (OpenSSH multiplexing) that later
    commands share, so that each costs a channel, not a log-in. The master's own
    session reads its standard input: when the harness dies, that input ends, the
    session closes and the master exits once the commands it carries have ended.
    """

    python = ".venv/bin/python"
    same_machine = False

    def __init__(self, url: SshUrl, options: list[str] | tuple[str, ...] = (),
                 remote_dir: str = runner.REPO) -> None:
        self.url = url
        self.options = list(options)
        self.remote_dir = remote_dir
        self.label = str(url)
        self._master: subprocess.Popen[bytes] | None = None
        self._control: str | None = None

    def ssh(self, remote_command: str, master: bool = False) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes"]
        for option in self.options:
            argv += ["-o", option]
        if self._control:
            argv += ["-o", f"ControlPath={self._control}",
                     "-o", "ControlMaster=yes" if master else "ControlMaster=no"]
        if self.url.port:
            argv += ["-p", str(self.url.port)]
        return [*argv, self.url.destination(), "--", remote_command]

    def open(self, directory: str, timeout: float = 30.0) -> None:
        """Start the master connection (its socket in ``directory``); RemoteError if the
        host cannot be reached."""
        self._control = os.path.join(directory, re.sub(r"[^A-Za-z0-9.]", "_", self.label)[-60:])
        self._master = subprocess.Popen(
            self.ssh("cat >/dev/null", master=True), stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self._control):
            if self._master.poll() is not None or time.monotonic() > deadline:
                err = b""
                if self._master.poll() is not None and self._master.stderr:
                    err = self._master.stderr.read()
                self.close()
                raise RemoteError(f"{self.label}: ssh log-in failed: "
                                  f"{err.decode(errors='replace').strip()[-300:] or 'timeout'}")
            time.sleep(0.01)

    def close(self) -> None:
        """End the master connection (idempotent)."""
        master, self._master, self._control = self._master, None, None
        if master is None:
            return
        with contextlib.suppress(OSError):
            if master.stdin:
                master.stdin.close()
        try:
            master.wait(5)
        except subprocess.TimeoutExpired:
            master.terminate()
            try:
                master.wait(5)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        if master.stderr:
            master.stderr.close()

    def argv(self, command: list[str]) -> list[str]:
        return self.ssh(f"cd {shlex.quote(self.remote_dir)} && exec {shlex.join(command)}")


def run_on(host: Host, command: list[str], timeout: float) -> str:
    """Run ``command`` on ``host`` and return its stdout; RemoteError on failure."""
    try:
        done = subprocess.run(host.argv(command), capture_output=True, text=True,
                              timeout=timeout, cwd=runner.REPO, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{host.label}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:]) or "no message"
        raise RemoteError(f"{host.label}: {shlex.join(command[:4])}... failed "
                          f"(status {done.returncode}): {tail[:300]}")
    return done.stdout


def host_info() -> dict[str, Any]:
    """This host's name, kernel, CPU and network namespace (``info``)."""
    import platform

    from bench.cli import machine_info

    info = machine_info()
    try:
        net_ns = os.readlink("/proc/self/ns/net")
    except OSError:
        net_ns = None
    return {**info["machine"], "kernel": info["kernel"], "release": platform.release(),
            "net_ns": net_ns, "python": info["python"].split()[0]}


def probe(host: Host, timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """(``info`` of ``host``, seconds the round trip took: ssh log-in + Python start)."""
    began = time.monotonic()
    out = run_on(host, [host.python, "-m", "bench.remote", "info"], timeout)
    took = time.monotonic() - began
    try:
        return json.loads(out.strip().splitlines()[-1]), took
    except (ValueError, IndexError):
        raise RemoteError(f"{host.label}: info printed no JSON: {out[-200:]!r}") from None


# ---------------------------------------------------------------- the placement

def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, largest first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


@dataclass
class Placement:
    """Where a run's server and load generators run (``Settings.remote``).

    ``bind`` is the address the server binds and the clients reach; ``client_threads``
    the load generator threads per client host (its CPUs); ``pin``: the hosts share
    this machine's CPUs, so the server and the load generators are pinned apart as in
    a local run; ``start_margin_s``: how far ahead the agreed start instant is set
    (first the slowest host's probe round trip; it grows by half, plus the delay, after
    a run in which a load generator started late)."""

    server: Host
    clients: list[Host]
    bind: str
    client_threads: list[int]
    pin: bool = False
    start_margin_s: float = 1.0
    hosts: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def start_server(self, target: runner.Target, protocol: str, settings: runner.Settings,
                     cpus: list[int] | None, ready_timeout: float = runner.READY_TIMEOUT,
                     extra: list[str] | None = None) -> Any:
        """The runner's ``start_server`` for this placement (bound to ``bind``)."""
        extra = [*(extra or []), "--host", self.bind]
        cpus = cpus if self.pin else None
        if isinstance(self.server, LocalHost):
            return runner.start_server(target, protocol, settings, cpus, ready_timeout, extra)
        spec = {"target": dataclasses.asdict(target), "protocol": protocol,
                "workers": settings.workers, "server_args": list(settings.server_args),
                "cpus": cpus, "ready_timeout": ready_timeout, "extra": extra,
                "file_size": settings.file_size}
        return remote_server.start(self.server, spec, ready_timeout)

    def load_and_measure(self, server: Any, target: runner.Target, workload: str,
                         concurrency: int, settings: runner.Settings,
                         client_cpus: list[int], use_perf: bool, record: Run,
                         server_cpus: list[int] | None = None) -> None:
        """The runner's ``_load_and_measure`` with the load from the client hosts."""
        if concurrency < len(self.clients):
            record.reason = (f"{concurrency} connections cannot be shared by "
                             f"{len(self.clients)} client hosts")
            record.failure = Failure.PLAN
            return
        conns = shares(concurrency, len(self.clients))
        idles = shares(settings.idle, len(self.clients))
        start_at = time.time() + self.start_margin_s
        opens_at = start_at + settings.warmup + runner.CONNECTED_TO_CLOCK_S
        span = runner.window_span(settings)
        procs: list[subprocess.Popen[str]] = []
        meter: subprocess.Popen[str] | None = None
        try:
            for index, (host, n, idle, threads) in enumerate(
                    zip(self.clients, conns, idles, self.client_threads, strict=True)):
                mine = dataclasses.replace(
                    settings, idle=idle,
                    rate=settings.rate * n / concurrency if settings.rate else None)
                argv = runner.loadgen_argv(server.host, server.port, workload, n, mine,
                                           threads=threads, duration=settings.duration)
                argv[0] = host.python
                argv += ["--start-at", f"{start_at:.6f}"]
                if "--seed" in argv:  # each host its own arrival stream, not a copy
                    at = argv.index("--seed") + 1
                    argv[at] = str(int(argv[at]) + index)
                if self.pin:
                    argv = server_process.pinned(argv, client_cpus)
                procs.append(subprocess.Popen(
                    host.argv(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, cwd=runner.REPO,
                    start_new_session=True))
            if isinstance(server, remote_server.RemoteServer):
                command = [self.server.python, "-m", "bench.remote_metrics", "--pid",
                           str(server.pid), "--opens-at", f"{opens_at:.6f}",
                           "--span", f"{span:g}"] + (["--perf"] if use_perf else [])
                if self.pin and server_cpus:
                    command += ["--cpus", ",".join(map(str, server_cpus)),
                                "--other-cpus", ",".join(map(str, client_cpus))]
                meter = subprocess.Popen(self.server.argv(command), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, cwd=runner.REPO, start_new_session=True)
                window = None
            else:
                window = window_at(server.proc.pid, opens_at, span, use_perf,
                                   server_cpus if self.pin else None,
                                   client_cpus if self.pin and server_cpus else None)
            bound = (self.start_margin_s + settings.warmup + settings.duration
                     + settings.timeout + settings.slack + settings.ready_timeout)
            deadline = time.monotonic() + bound
            results, problems, status = [], [], Status.FAILED
            for host, proc in zip(self.clients, procs, strict=True):
                result, problem, outcome = runner.finish_loadgen(proc,
                                                                 deadline - time.monotonic())
                results.append(result)
                if result is None:
                    problems.append(f"{host.label}: {problem}")
                    if outcome == Status.TIMEOUT:
                        status = Status.TIMEOUT
            if meter is not None:
                try:
                    out, err = meter.communicate(timeout=max(deadline - time.monotonic(), 5))
                    window = from_json(out.strip().splitlines()[-1]) if out.strip() else None
                    if window is None:
                        problems.append(f"{self.server.label}: no server metrics: "
                                        f"{err.strip()[-200:]}")
                except (subprocess.TimeoutExpired, ValueError) as exc:
                    problems.append(f"{self.server.label}: no server metrics: {exc}")
        finally:
            for proc in [*procs, *([meter] if meter else [])]:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
        if problems or window is None:
            record.reason, record.status = "; ".join(problems), status
            record.failure = (Failure.METRICS if all(r is not None for r in results)
                              else Failure.LOADGEN)
            return
        usage, syscalls, died = window
        record.server_host = self.server.label
        record.server_address = f"{server.host}:{server.port}"
        record.server_net_ns = getattr(server, "net_ns", None)
        merged = loadgen.merge([r for r in results if r is not None])
        if merged["start_late_s"] > 0.01:  # a late host ran out of step: allow more next time
            self.start_margin_s = self.start_margin_s * 1.5 + merged["start_late_s"]
        record.start_late_s = merged["start_late_s"]
        record.clients = [
            {"host": host.label, "connections": r["connections"], "requests": r["requests"],
             "requests_per_s": r["requests_per_s"], "errors": r["errors"],
             "errors_total": r["errors_total"], "client_cpu_util": r["client_cpu_util"],
             "client_bound": client_bound(r["client_cpu_util"]),
             "start_late_s": r["start_late_s"], "p99_us": r["latency_us"]["p99"]}
            for host, r in zip(self.clients, results, strict=True) if r is not None]
        runner.fill_record(record, merged, usage, syscalls, time.monotonic() if died else None,
                           server, target, workload, settings, server_cpus if self.pin else None,
                           client_cpus if self.pin else [])


def make_placement(server: Host, clients: list[Host], bind: str, pin: bool,
                   local_threads: int) -> Placement:
    """Probe every host once (kernel, CPU; the ssh round trip sets the start margin)."""
    roles = [("server", server), *(("client", c) for c in clients)]
    unique = list({id(host): host for _, host in roles}.values())
    with concurrent.futures.ThreadPoolExecutor(len(unique)) as pool:
        probed = dict(zip(map(id, unique), pool.map(probe, unique), strict=True))
    seen = {key: info for key, (info, _) in probed.items()}
    took = [seconds for _, seconds in probed.values()]
    hosts = [{"role": role, "host": host.label, **seen[id(host)]} for role, host in roles]
    threads = [local_threads if c.same_machine else int(seen[id(c)].get("cpus") or 1)
               for c in clients]
    margin = max(START_MARGIN_MIN_S, 1.2 * max(took))
    return Placement(server, clients, bind, threads, pin, margin, hosts)


def from_options(stack: contextlib.ExitStack, *, server_host: str | None,
                 client_hosts: str | None, ssh_options: list[str], remote_dir: str | None,
                 host: str | None, net: str, client_cpus: list[int]) -> Placement | None:
    """The placement ``python -m bench``'s flags ask for, or None for a plain loopback
    run. ValueError for flags that do not fit together; RemoteError (or NetnsError)
    when a host cannot be used. ``--net veth`` builds its namespaces on ``stack``."""
    remote = server_host is not None or client_hosts is not None
    if net == "veth":
        if remote:
            raise ValueError("--net veth is a single-machine run; --server-host and "
                             "--client-hosts choose the network themselves")
        if ssh_options or remote_dir or host:
            raise ValueError("--ssh-option, --remote-dir and --host need --server-host or "
                             "--client-hosts")
        from bench import netns

        topology = stack.enter_context(netns.Topology(2))
        server_ns, client_ns = topology.hosts
        return make_placement(NetnsHost(server_ns.name), [NetnsHost(client_ns.name)],
                              server_ns.address, pin=True, local_threads=len(client_cpus))
    if not remote:
        if ssh_options or remote_dir or host:
            raise ValueError("--ssh-option, --remote-dir and --host need --server-host or "
                             "--client-hosts")
        return None
    directory = remote_dir or runner.REPO

    def ssh_host(text: str) -> SshHost:
        try:
            return SshHost(parse_url(text), ssh_options, directory)
        except ValueError as exc:
            raise ValueError(f"--server-host/--client-hosts: {exc}") from None

    server: Host = ssh_host(server_host) if server_host else LocalHost()
    urls = [u.strip() for u in (client_hosts or "").split(",") if u.strip()]
    if client_hosts is not None and not urls:
        raise ValueError("--client-hosts: no host named")
    clients: list[Host] = [ssh_host(u) for u in urls] or [LocalHost()]
    if len({c.label for c in clients}) != len(clients):
        raise ValueError("--client-hosts: a host is named twice")
    if host is None and isinstance(server, SshHost):
        host = server.url.host
    if host is None:
        raise ValueError("--client-hosts with the server here: give --host, the address of "
                         "this machine that the client hosts reach")
    control = stack.enter_context(tempfile.TemporaryDirectory(prefix="tcpzoo-ssh-"))
    reached = [h for h in {id(h): h for h in (server, *clients)}.values()
               if isinstance(h, SshHost)]
    for ssh_host_ in reached:
        stack.callback(ssh_host_.close)
    with concurrent.futures.ThreadPoolExecutor(len(reached)) as pool:
        list(pool.map(lambda h: h.open(control), reached))
    threads = len(os.sched_getaffinity(0)) if not isinstance(server, LocalHost) else 1
    return make_placement(server, clients, host, pin=False, local_threads=threads)


# ---------------------------------------------------------------- setup and the CLI

def setup(hosts: list[SshHost], run_zoo: bool = True) -> int:
    """Copy this checkout to each host's ``remote_dir`` and run ``./zoo setup`` there."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, cwd=runner.REPO,
                            check=True).stdout
    names = [n for n in listed.split(b"\0") if n and os.path.lexists(
        os.path.join(runner.REPO.encode(), n))]
    status = 0
    for host in hosts:
        print(f"bench.remote: {host.label}: copying {len(names)} files to "
              f"{host.remote_dir}", file=sys.stderr)
        tar = subprocess.Popen(["tar", "-C", runner.REPO, "--null", "-T", "-", "-czf", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        quoted = shlex.quote(host.remote_dir)
        copy = subprocess.Popen(host.ssh(f"mkdir -p {quoted} && tar -C {quoted} -xzf -"),
                                stdin=tar.stdout)
        assert tar.stdin is not None and tar.stdout is not None
        tar.stdout.close()
        tar.stdin.write(b"\0".join(names) + b"\0")
        tar.stdin.close()
        if tar.wait() != 0 or copy.wait() != 0:
            print(f"bench.remote: {host.label}: copy failed", file=sys.stderr)
            status = 1
            continue
        if run_zoo:
            print(f"bench.remote: {host.label}: ./zoo setup", file=sys.stderr)
            if subprocess.run(host.ssh(f"cd {quoted} && ./zoo setup")).returncode != 0:
                print(f"bench.remote: {host.label}: ./zoo setup failed", file=sys.stderr)
                status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.remote setup|info``."""
    parser = argparse.ArgumentParser(prog="python -m bench.remote",
                                     description="Hosts for python -m bench --server-host / "
                                                 "--client-hosts.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("setup", help="copy this checkout to the hosts and run ./zoo setup")
    up.add_argument("hosts", nargs="+", metavar="ssh://[USER@]HOST[:PORT]")
    up.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                    help="passed to ssh as -o OPTION (repeatable)")
    up.add_argument("--remote-dir", default=runner.REPO,
                    help="where the checkout goes on the hosts (default: the same path)")
    up.add_argument("--no-zoo", action="store_true", help="copy only")
    sub.add_parser("info", help="this host's kernel, CPU and network namespace as JSON")
    options = parser.parse_args(argv)
    if options.command == "info":
        print(json.dumps(host_info()))
        return 0
    try:
        hosts = [SshHost(parse_url(h), options.ssh_option, options.remote_dir)
                 for h in options.hosts]
    except ValueError as exc:
        parser.error(str(exc))
    return setup(hosts, run_zoo=not options.no_zoo)


if __name__ == "__main__":
    sys.exit(main())
