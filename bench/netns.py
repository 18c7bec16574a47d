"""Hosts made of network namespaces on this machine, for tests and ``--net veth``.

:class:`Topology` builds N namespaces joined by veth pairs to one bridge that lives
in a namespace of its own (so the host's firewall and bridge settings never see the
traffic), addressed from one /24 of 198.18.0.0/15, the range RFC 2544 reserves for
benchmark networks. This machine joins the bridge too (one veth, address .254), so
that it can reach the namespaces' ``sshd``.

With ``sshd=True`` every namespace runs its own ``sshd`` (the distribution's
openssh-server) listening only on the namespace's address, with a host key and an
authorized client key generated for the topology in a temporary directory;
:attr:`Topology.ssh_options` are the ``ssh -o`` options that log in with them.

Leaving the ``with`` block (also on error) kills every process still inside the
namespaces, deletes them (their veths go with them) and removes the keys.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
SSHD = "/usr/sbin/sshd"
SSHD_READY_S = 10.0


class NetnsError(Exception):
    """The namespaces could not be built here; the message says why."""


@dataclass(frozen=True)
class NsHost:
    """One namespace: its name (``ip netns``), its address, and its ssh:// URL."""

    name: str
    address: str
    url: str


def why_not(sshd: bool = False) -> str | None:
    """Why namespaces (and their sshd) cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if sshd and not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (openssh-server is not installed)"
    if sshd and (shutil.which("ssh") is None or shutil.which("ssh-keygen") is None):
        return "the OpenSSH client (ssh, ssh-keygen) is not installed"
    name = f"tzprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()[:200]}")


def _used_networks() -> set[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    used = set()
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.add(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return used


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no interface of this machine uses."""
    used = _used_networks()
    subnets = list(BENCH_NET.subnets(new_prefix=24))
    random.shuffle(subnets)
    for net in subnets:
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError("every /24 of 198.18.0.0/15 is in use on this machine")


class Topology:
    """``count`` namespaces on one bridge; a context manager (see the module doc)."""

    def __init__(self, count: int, sshd: bool = False) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.count = count
        self.sshd = sshd
        self.tag = f"{os.getpid() % 100000:05d}{random.randrange(36 ** 2):03x}"[-6:]
        self.hosts: list[NsHost] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.hub = f"tz{self.tag}-hub"
        self._made: list[str] = []
        self._root_if = f"tz{self.tag}r"
        self._dir: str | None = None
        self._sshds: list[subprocess.Popen[bytes]] = []
        self.ssh_options: list[str] = []

    def __enter__(self) -> Topology:
        problem = why_not(self.sshd)
        if problem:
            raise NetnsError(problem)
        try:
            self._build()
            if self.sshd:
                self._start_sshds()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        self.subnet = _pick_subnet()
        prefix = self.subnet.prefixlen
        addrs = list(self.subnet.hosts())
        _ip("netns", "add", self.hub)
        self._made.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        user = getpass.getuser()
        for i in range(self.count):
            name = f"tz{self.tag}-h{i}"
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
            self._join(name, f"tz{self.tag}h{i}", f"{addrs[i]}/{prefix}")
            self.hosts.append(NsHost(name, str(addrs[i]), f"ssh://{user}@{addrs[i]}"))
        self._join(None, self._root_if, f"{addrs[-1]}/{prefix}")

    def _join(self, netns: str | None, ifname: str, cidr: str) -> None:
        """A veth pair: ``ifname`` in ``netns`` (None: this machine's namespace) with
        ``cidr``, its peer in the hub namespace on the bridge."""
        peer = ifname + "b"
        _ip("link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", self.hub)
        if netns is not None:
            _ip("link", "set", ifname, "netns", netns)
        where = ["-n", netns] if netns else []
        _ip(*where, "addr", "add", cidr, "dev", ifname)
        _ip(*where, "link", "set", ifname, "up")
        _ip("-n", self.hub, "link", "set", peer, "master", "br0")
        _ip("-n", self.hub, "link", "set", peer, "up")

    def _start_sshds(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="tcpzoo-sshd-")
        key = os.path.join(self._dir, "id_ed25519")
        host_key = os.path.join(self._dir, "host_ed25519")
        for path in (key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                           check=True, capture_output=True, timeout=30)
        shutil.copy(key + ".pub", os.path.join(self._dir, "authorized_keys"))
        with open(host_key + ".pub") as f:
            host_pub = " ".join(f.read().split()[:2])
        known = os.path.join(self._dir, "known_hosts")
        with open(known, "w") as f:
            f.writelines(f"{host.address} {host_pub}\n" for host in self.hosts)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        for host in self.hosts:
            config = os.path.join(self._dir, f"sshd_{host.name}.conf")
            with open(config, "w") as f:
                f.write(
                    f"ListenAddress {host.address}\nHostKey {host_key}\n"
                    f"AuthorizedKeysFile {self._dir}/authorized_keys\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                    f"PidFile {self._dir}/sshd_{host.name}.pid\nMaxStartups 64\n"
                    "MaxSessions 64\nLogLevel ERROR\n")
            self._sshds.append(subprocess.Popen(
                ["ip", "netns", "exec", host.name, SSHD, "-D", "-e", "-f", config],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for host, proc in zip(self.hosts, self._sshds, strict=True):
            self._wait_listening(host, proc)
        self.ssh_options = [f"IdentityFile={key}", f"UserKnownHostsFile={known}",
                            "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes",
                            "IdentitiesOnly=yes", "BatchMode=yes", "LogLevel=ERROR"]

    @staticmethod
    def _wait_listening(host: NsHost, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + SSHD_READY_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise NetnsError(f"sshd in {host.name} exited ({proc.returncode}): "
                                 f"{err.strip()[:200]}")
            try:
                socket.create_connection((host.address, 22), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise NetnsError(f"sshd in {host.name} not listening within {SSHD_READY_S:g} s")

    def sshd_pids(self) -> list[int]:
        """The listening sshd of each namespace (sessions are their children)."""
        return [proc.pid for proc in self._sshds if proc.poll() is None]

    @property
    def key_dir(self) -> str | None:
        """The temporary directory of the keys and sshd configurations."""
        return self._dir

    def pids(self) -> list[int]:
        """Every process running inside one of the namespaces now."""
        found = []
        for name in self._made:
            out = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                 text=True, timeout=10).stdout
            found += [int(p) for p in out.split() if p.isdigit()]
        return found

    def close(self) -> None:
        """Kill what runs inside, delete the namespaces and the keys (idempotent)."""
        for proc in self._sshds:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._sshds:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr:
                proc.stderr.close()
        self._sshds.clear()
        for _ in range(50):  # bounded: a process may fork while we kill
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        subprocess.run(["ip", "link", "del", self._root_if], capture_output=True, timeout=10)
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self._made.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
