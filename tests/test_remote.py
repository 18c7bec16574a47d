"""The server on one host and the load from others, with hosts made of network
namespaces on this machine: each runs its own sshd (keys generated for the test), on
a bridge addressed from 198.18.0.0/15. ``python -m bench --server-host --client-hosts``
runs against two backends over real ssh; ``--net veth`` runs the same namespaces as
an axis; a lost session stops the remote server; the load generators' histograms
merge exactly and their clocks start at one instant. Nothing outside the namespaces
the tests create is ever addressed; where namespaces or sshd cannot be made here,
the tests that need them skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench import loadgen, netns, remote, runner
from servers.registry import BY_NAME
from tests.servers import start_server

ROOT = Path(__file__).resolve().parent.parent


def _skip_without(sshd: bool) -> None:
    reason = netns.why_not(sshd=sshd)
    if reason:
        pytest.skip(reason)


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("tz")}


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _bench(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "--quiet", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _samples(out: Path) -> list[dict]:
    with open(out / "results.json") as f:
        document = json.load(f)
    return [sample for row in document["runs"] for sample in row["samples"]]


@pytest.fixture
def topology() -> Iterator[netns.Topology]:
    """Three namespaces with sshd; afterwards neither they nor their sshd exist."""
    _skip_without(sshd=True)
    with netns.Topology(3, sshd=True) as topo:
        key_dir = topo.key_dir
        names = {host.name for host in topo.hosts} | {topo.hub}
        yield topo
    assert not names & _our_namespaces()
    assert key_dir and not _processes_mentioning(key_dir)  # every sshd is gone


def test_server_host_and_two_client_hosts(topology: netns.Topology, tmp_path: Path) -> None:
    server, client1, client2 = topology.hosts
    options = [arg for option in topology.ssh_options for arg in ("--ssh-option", option)]
    done = _bench("--servers", "c-epoll,epoll", "--workloads", "http", "--concurrency", "9",
                  "--duration", "0.3", "--warmup", "0.05", "--repeat", "1", "--no-perf",
                  "--server-host", server.url, "--client-hosts", f"{client1.url},{client2.url}",
                  "--out", str(tmp_path), *options)
    assert done.returncode == 0, done.stderr[-2000:]
    # nothing of the runs is left in the namespaces: only the listening sshd
    assert sorted(topology.pids()) == sorted(topology.sshd_pids())
    assert not _processes_mentioning("tcpzoo-ssh-")  # the ssh master connections ended
    samples = _samples(tmp_path)
    assert sorted(s["server"] for s in samples) == ["c-epoll", "epoll"]
    server_ns = os.stat(f"/run/netns/{server.name}").st_ino
    for sample in samples:
        assert sample["status"] == "ok", sample["reason"]
        assert sample["server_exit"] == "clean"
        # the server process itself ran in the server's namespace, on its address
        assert sample["server_net_ns"] == f"net:[{server_ns}]"
        assert sample["server_address"].rpartition(":")[0] == server.address
        clients = sample["clients"]
        assert [c["host"] for c in clients] == [client1.url, client2.url]
        assert [c["connections"] for c in clients] == [5, 4]
        assert all(c["requests"] > 0 and c["errors_total"] == 0 for c in clients)
        assert sample["requests"] == sum(c["requests"] for c in clients)
    with open(tmp_path / "summary.md") as f:
        summary = f.read()
    for host in (server, client1, client2):
        assert f"host {host.url}:" in summary


@pytest.fixture(scope="module")
def one_host() -> Iterator[netns.Topology]:
    _skip_without(sshd=True)
    with netns.Topology(1, sshd=True) as topo:
        yield topo


def test_setup_copies_the_checkout(one_host: netns.Topology, tmp_path: Path) -> None:
    target = tmp_path / "checkout"
    options = [arg for option in one_host.ssh_options for arg in ("--ssh-option", option)]
    done = subprocess.run([sys.executable, "-m", "bench.remote", "setup", "--no-zoo",
                           "--remote-dir", str(target), *options, one_host.hosts[0].url],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.split()
    for name in ("zoo", "bench/remote.py", "bench/native/loadgen.c", "tests/test_remote.py"):
        assert name in tracked
        assert (target / name).read_bytes() == (ROOT / name).read_bytes()
    assert os.access(target / "zoo", os.X_OK)
    assert not (target / ".git").exists() and not (target / ".venv").exists()
    bad = subprocess.run([sys.executable, "-m", "bench.remote", "setup", "nohost"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "expected ssh://" in bad.stderr


def test_lost_session_stops_the_remote_server(one_host: netns.Topology) -> None:
    topo = one_host
    with contextlib.ExitStack() as stack:
        placement = remote.from_options(
            stack, server_host=topo.hosts[0].url, client_hosts=None,
            ssh_options=topo.ssh_options, remote_dir=None, host=None, net="loopback",
            client_cpus=[0])
        assert placement is not None
        entry = BY_NAME["epoll"]
        target = runner.Target(entry.name, tuple(entry.argv), entry.kind,
                               tuple(entry.protocols))
        server = placement.start_server(target, "http", runner.Settings(), None)
        assert server.alive() and server.pid in topo.pids()
        os.killpg(server.proc.pid, signal.SIGKILL)  # the harness's ssh client: gone
        server.proc.wait(5)
        deadline = time.monotonic() + 10
        while server.pid in topo.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.pid not in topo.pids()
        server.stop()


def test_namespaces_go_when_the_block_fails() -> None:
    _skip_without(sshd=True)
    with pytest.raises(RuntimeError), netns.Topology(2, sshd=True) as topo:
        names = {host.name for host in topo.hosts} | {topo.hub}
        key_dir = topo.key_dir
        assert key_dir and len(_processes_mentioning(key_dir)) >= 2
        raise RuntimeError("a failed run")
    assert not names & _our_namespaces()
    assert not _processes_mentioning(key_dir)


def test_net_veth_axis(tmp_path: Path) -> None:
    _skip_without(sshd=False)
    before = _our_namespaces()
    done = _bench("--servers", "c-epoll", "--workloads", "http", "--concurrency", "8",
                  "--duration", "0.3", "--warmup", "0.05", "--repeat", "1", "--no-perf",
                  "--net", "veth", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _our_namespaces() <= before
    (sample,) = _samples(tmp_path)
    assert sample["status"] == "ok", sample["reason"]
    assert sample["server_host"].startswith("netns:")
    assert sample["server_net_ns"] != os.readlink("/proc/self/ns/net")
    assert sample["requests"] == sample["clients"][0]["requests"] > 0


# -- merging and the shared start, over loopback ------------------------------------------

@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = start_server("c-epoll", "http")
    yield server.port
    assert server.stop(timeout=5) == 0


def test_merge_is_exact(http_port: int) -> None:
    one = loadgen.run("127.0.0.1", http_port, "http", 4, 5.0, threads=1, requests=3000)
    two = loadgen.run("127.0.0.1", http_port, "http", 3, 5.0, threads=1, requests=2000)
    for result in (one, two):
        assert sum(c for _, c in result["histogram"]["buckets"]) == result["requests"]
        # the buckets give back the native run's own percentiles exactly
        assert loadgen.merge([result])["latency_us"] == result["latency_us"]
    merged = loadgen.merge([one, two])
    assert merged["requests"] == 5000 and merged["connections"] == 7
    counts: dict[int, int] = {}
    for result in (one, two):
        for high, count in result["histogram"]["buckets"]:
            counts[high] = counts.get(high, 0) + count
    assert merged["histogram"]["buckets"] == sorted([h, c] for h, c in counts.items())
    values = sorted(v for v, c in counts.items() for _ in range(c))
    assert merged["latency_us"]["p50"] == min(values[2499], merged["latency_us"]["max"])
    assert merged["latency_us"]["max"] == max(one["latency_us"]["max"], two["latency_us"]["max"])
    with pytest.raises(ValueError, match="histogram"):
        loadgen.merge([{k: v for k, v in one.items() if k != "histogram"}])


def test_start_at_holds_the_clock(http_port: int) -> None:
    start_at = time.time() + 1.5  # room for Python's start on a busy machine
    argv = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{http_port}",
            "-c", "2", "--threads", "1", "-d", "0.2", "--json", "--start-at", f"{start_at:.6f}"]
    began = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert time.time() >= start_at + 0.2 and began < start_at  # waited for the instant
    assert result["requests"] > 0 and 0 <= result["start_late_s"] < 1.5
    late = subprocess.run([*argv[:-1], f"{time.time() + 900:.0f}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=30)
    assert late.returncode == 1 and "start_at" in late.stderr


# -- flags --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "parsed"), [
    ("ssh://h1", remote.SshUrl("h1")),
    ("ssh://bob@198.18.0.1:2222", remote.SshUrl("198.18.0.1", "bob", 2222)),
    ("ssh://[fd00::1]:22", remote.SshUrl("fd00::1", None, 22)),
])
def test_parse_url(text: str, parsed: remote.SshUrl) -> None:
    assert remote.parse_url(text) == parsed
    assert remote.parse_url(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["h1", "http://h1", "ssh://", "ssh://h:0", "ssh://h:70000",
                                  "ssh://a@b@c", "ssh://h/path"])
def test_parse_url_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"ssh://\[USER@\]HOST\[:PORT\]"):
        remote.parse_url(text)


@pytest.mark.parametrize(("args", "message"), [
    (["--net", "veth", "--server-host", "ssh://198.18.0.1"], "--net veth is a single-machine"),
    (["--client-hosts", "ssh://198.18.0.2"], "give --host"),
    (["--ssh-option", "Port=22"], "need --server-host or --client-hosts"),
    (["--server-host", "198.18.0.1"], "expected ssh://"),
    (["--client-hosts", "ssh://198.18.0.2,ssh://198.18.0.2", "--host", "198.18.0.1"],
     "named twice"),
    (["--net", "wifi"], "invalid choice"),
])
def test_bad_remote_flags(args: list[str], message: str) -> None:
    done = _bench("--servers", "c-epoll", "--workloads", "http", *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
