"""Pinning a kernel server: cpus= for its threads, WQ_SYSFS for its unbound workqueue.

The in-guest benchmark gives the load generator a vCPU of its own and the servers the
others, kernel servers included; these tests check that the module really keeps its
listener and per-connection kthreads on the CPUs it is given, that its unbound
workqueue can be pinned through sysfs by the launcher, and that a bad list is refused.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.kernel import helpers

WQ_SYSFS = Path("/sys/devices/virtual/workqueue")


@pytest.fixture
def last_cpu() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: pinning cannot be told apart from not pinning")
    return cpus[-1]


def affinities(prefix: str) -> dict[str, set[int]]:
    """{comm: allowed CPUs} of the tasks whose name starts with ``prefix``."""
    out = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
            if name.startswith(prefix):
                out[name] = os.sched_getaffinity(int(comm.parent.name))
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.parametrize("module", ["kecho", "khttpd"])
def test_listener_runs_on_the_given_cpu(module: str, port: int, last_cpu: int) -> None:
    helpers.load(module, port=port, cpus=str(last_cpu))
    found = affinities(f"{module}-listen")
    assert found == {f"{module}-listen": {last_cpu}}


def test_kthread_workers_run_on_the_given_cpu(port: int, last_cpu: int) -> None:
    helpers.load("kecho", port=port, mode="kthread", cpus=str(last_cpu))
    socks = [helpers.connect(port) for _ in range(3)]
    try:
        for i, s in enumerate(socks):
            assert helpers.exchange(s, b"x%d" % i, 2) == b"x%d" % i
        workers = affinities("kecho/")
        assert len(workers) >= 3, workers
        assert all(cpus == {last_cpu} for cpus in workers.values()), workers
    finally:
        for s in socks:
            s.close()


def test_without_cpus_threads_may_run_anywhere(port: int, last_cpu: int) -> None:
    helpers.load("kecho", port=port, mode="kthread")
    with helpers.connect(port) as s:
        assert helpers.exchange(s, b"hi", 2) == b"hi"
        workers = affinities("kecho/")
        assert workers and all(len(cpus) > 1 for cpus in workers.values()), workers


def test_unbound_workqueue_is_in_sysfs_only_when_unbound(port: int) -> None:
    helpers.load("kecho", port=port, mode="wq")
    assert (WQ_SYSFS / "kecho" / "cpumask").is_file()
    helpers.unload("kecho")
    helpers.load("kecho", port=port, mode="wq", bound=True)
    assert not (WQ_SYSFS / "kecho").exists()


@pytest.mark.parametrize("bad", ["abc", "1-", "9999", "0-9999"])
def test_a_bad_cpu_list_is_refused(port: int, bad: str) -> None:
    before = helpers.dmesg()
    with pytest.raises((OSError, helpers.Unavailable)):
        helpers.load("kecho", port=port, cpus=bad)
    assert "kecho" not in helpers.loaded_modules()
    assert f"kecho: cpus={bad} is not a list of online CPUs" in helpers.dmesg()[len(before):]


@pytest.mark.parametrize(("module", "name"), [("kecho", "kecho"), ("khttpd", "khttpd")])
def test_launcher_pins_module_where_it_runs(module: str, name: str, last_cpu: int) -> None:
    server = helpers.launch(module, cpu=last_cpu)
    try:
        mask = (WQ_SYSFS / name / "cpumask").read_text().strip().replace(",", "")
        assert int(mask, 16) == 1 << last_cpu
        assert affinities(f"{name}-listen") == {f"{name}-listen": {last_cpu}}
        helpers.assert_serves(server.port, "echo" if module == "kecho" else "http")
    finally:
        code = server.terminate(signal.SIGTERM, 15)
        server.kill_all()
        server.close()
    assert code == 0
    assert name not in helpers.loaded_modules()
