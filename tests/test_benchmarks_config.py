"""The pytest configuration of the benchmarks (issue #16), through pytest itself.

Each test runs pytest in a subprocess from the repository root, as a user would
type it, on a few benchmarks (the ``epoll`` server, and ``kecho`` for the skip)
made tiny through ``ZOO_BENCH_*`` (the guestbook one needs ``redis-server``):

- plain ``pytest`` collects ``tests/`` and ``benchmarks/test_zoo.py`` but not the
  load generator's ceiling proof, and skips the benchmarks without starting a
  server (a plugin records every ``bench.runner.start_server`` call);
- bare ``pytest --benchmark-only`` runs them against real servers, and
  pytest-benchmark's own features work on the results: ``--benchmark-json``
  (with our ``extra_info``), ``--benchmark-histogram`` (an SVG),
  ``--benchmark-group-by=param:workload``, and ``--benchmark-autosave`` then
  ``--benchmark-compare`` (on a benchmark named on the command line, which runs
  it without ``--benchmark-only``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.records import LATENCY_KEYS

ROOT = Path(__file__).resolve().parent.parent
SELECTED = ("epoll-echo", "epoll-http", "epoll-et-echo", "epoll-guestbook")
KERNEL = "kecho-echo"
SELECTION = " or ".join(f"test_zoo[{case}]" for case in (*SELECTED, KERNEL))
TINY = {"ZOO_BENCH_REQUESTS": "200", "ZOO_BENCH_GUESTBOOK_REQUESTS": "100",
        "ZOO_BENCH_ROUNDS": "2", "ZOO_BENCH_CONCURRENCY": "4"}
SPY = '''"""Test plugin: log the name of every server that bench.runner starts."""
import os

from bench import runner

_start_server = runner.start_server


def _logged(target, *args, **kwargs):
    with open(os.environ["ZOO_START_LOG"], "a") as log:
        log.write(target.name + "\\n")
    return _start_server(target, *args, **kwargs)


runner.start_server = _logged
'''


@dataclass
class Run:
    """One pytest subprocess: its exit status and output, and where it wrote."""

    returncode: int
    output: str
    tmp: Path
    started: list[str]

    def counts(self) -> dict[str, int]:
        """The summary line ("== 3 passed, 1 skipped in 2.0s ==") as {outcome: count}."""
        lines = re.findall(r"^=+ (.* in [\d.]+s.*) =+$", self.output, re.MULTILINE)
        assert lines, self.output
        return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def run_pytest(tmp: Path, *args: str) -> Run:
    """``python -m pytest ARGS`` from the repository root, with tiny benchmark sizes."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "zoo_start_spy.py").write_text(SPY)
    log = tmp / "started.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ZOO_BENCH_"))}
    env.update(TINY)
    env["ZOO_START_LOG"] = str(log)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "zoo_start_spy", "-rs", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=100,
    )
    started = log.read_text().split() if log.exists() else []
    return Run(proc.returncode, proc.stdout + proc.stderr, tmp, started)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Bare ``pytest --benchmark-only`` (no path: testpaths), every output option on."""
    tmp = tmp_path_factory.mktemp("bench")
    return run_pytest(
        tmp, "--benchmark-only", "-k", SELECTION,
        f"--benchmark-json={tmp / 'out.json'}",
        f"--benchmark-histogram={tmp / 'hist' / 'zoo'}",
        f"--benchmark-storage=file://{tmp / 'storage'}", "--benchmark-autosave",
        "--benchmark-group-by=param:workload",
    )


def test_plain_pytest_skips_benchmarks_without_starting_a_server(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "-k", SELECTION)
    assert run.returncode == 0, run.output
    assert run.counts().get("skipped") == len(SELECTED) + 1, run.output
    assert "passed" not in run.counts(), run.output
    assert f"SKIPPED [{len(SELECTED) + 1}] benchmarks/test_zoo.py: a benchmark: runs with " \
           "`pytest --benchmark-only`" in run.output, run.output
    assert run.started == []


def test_default_collection_is_the_suites_and_the_zoo_benchmarks(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "--collect-only", "-q")
    assert run.returncode == 0, run.output
    files = {line.split("::", 1)[0] for line in run.output.splitlines() if "::" in line}
    assert {"tests/test_core.py", "tests/test_conformance_http.py",
            "benchmarks/test_zoo.py"} <= files, sorted(files)
    assert "benchmarks/test_loadgen_ceiling.py" not in files
    ceiling = run_pytest(tmp_path, "--collect-only", "-q", "benchmarks/test_loadgen_ceiling.py")
    assert ceiling.returncode == 0, ceiling.output
    assert "3 tests collected" in ceiling.output, ceiling.output


def test_bare_benchmark_only_runs_the_benchmarks(bench_run: Run) -> None:
    assert bench_run.returncode == 0, bench_run.output
    counts = bench_run.counts()
    assert counts.get("passed") == len(SELECTED), bench_run.output
    assert counts.get("deselected", 0) > 1000, bench_run.output  # tests/: collected, not run
    assert sorted(bench_run.started) == sorted(["epoll", "epoll", "epoll", "epoll-et", "kecho"])
    assert "Name (time in" in bench_run.output  # pytest-benchmark's table
    # kecho needs module loading: skipped here with the command that runs it in the guest,
    # or (a host that loads modules) measured.
    if counts.get("skipped"):
        assert re.search(r"SKIPPED \[1\] .*kecho: .*in the QEMU guest: "
                         r"\S*python -m bench\.vm run -- .*--benchmark-only "
                         r"'benchmarks/test_zoo\.py::test_zoo\[kecho-echo\]'",
                         bench_run.output), bench_run.output


def check_extra_info(benchmarks: list[dict], expected: set[str]) -> None:
    """Every expected benchmark is there and carries the load generator's figures."""
    by_case = {b["param"]: b for b in benchmarks}
    assert expected <= set(by_case), sorted(by_case)
    for case in expected:
        info = by_case[case]["extra_info"]
        server, workload = case.rsplit("-", 1)
        assert (info["server"], info["workload"]) == (server, workload)
        assert by_case[case]["params"] == {"server": server, "workload": workload}
        assert info["requests_per_s"] > 0, info
        size = "ZOO_BENCH_GUESTBOOK_REQUESTS" if workload == "guestbook" else "ZOO_BENCH_REQUESTS"
        assert info["requests_per_round"] == int(TINY[size])
        assert set(info["latency_us"]) == set(LATENCY_KEYS)
        assert 0 < info["latency_us"]["p50"] <= info["latency_us"]["max"]
        assert info["errors_total"] == 0
        assert info["client_cpu_util"] > 0
        assert by_case[case]["stats"]["rounds"] == int(TINY["ZOO_BENCH_ROUNDS"])
        if workload == "http":  # the capacity at the default ZOO_BENCH_SLO (test_zoo.py)
            assert info["capacity_target"] == "p99<=5000us", info
            low, high = info["capacity_bracket"]
            assert info["capacity_rps"] == low > 0, info


def test_json_holds_extra_info(bench_run: Run) -> None:
    data = json.loads((bench_run.tmp / "out.json").read_text())
    check_extra_info(data["benchmarks"], set(SELECTED))


def test_histogram_writes_svg(bench_run: Run) -> None:
    svgs = sorted((bench_run.tmp / "hist").glob("zoo*.svg"))
    assert svgs, bench_run.output
    for svg in svgs:
        text = svg.read_text()
        assert "<svg" in text and "test_zoo[epoll-" in text


def test_group_by_workload(bench_run: Run) -> None:
    headers = re.findall(r"benchmark '([^']*)': (\d+) tests", bench_run.output)
    assert sorted(headers) == [("workload=echo", "2"), ("workload=guestbook", "1"),
                               ("workload=http", "1")], headers


def test_autosave_then_compare(bench_run: Run) -> None:
    saved = sorted((bench_run.tmp / "storage").glob("*/0001_*.json"))
    assert len(saved) == 1, bench_run.output
    check_extra_info(json.loads(saved[0].read_text())["benchmarks"], set(SELECTED))
    # Naming a benchmark on the command line asks for it (no --benchmark-only needed).
    again = run_pytest(bench_run.tmp / "compare",
                       f"--benchmark-storage=file://{bench_run.tmp / 'storage'}",
                       "--benchmark-compare", "--benchmark-columns=mean,rounds",
                       "benchmarks/test_zoo.py::test_zoo[epoll-echo]")
    assert again.returncode == 0, again.output
    assert again.started == ["epoll"]
    assert re.search(r"test_zoo\[epoll-echo\] \(0001_\S*\)", again.output), again.output
    assert "test_zoo[epoll-echo] (NOW)" in again.output, again.output
