"""Tests of the benchmark harness as a measuring instrument.

Against small faulty servers (tests/fixtures/faulty_server.py) the harness
must count wrong answers as errors, measure a known delay, show a stall in
open loop that closed loop hides, and report a crash instead of hanging; and
``python -m bench --quick`` must write every output file with the documented
keys. Needs the native load generator (``zoo_loadgen``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bench import aggregate, loadgen, runner, tables
from bench.records import LATENCY_KEYS, Failure, Run, Status

LOADGEN_PROBLEM = loadgen.native_problem()
needs_loadgen = pytest.mark.skipif(LOADGEN_PROBLEM is not None, reason=LOADGEN_PROBLEM or "")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "faulty_server.py")
REQUIRED = ("server", "workload", "concurrency", "requests_per_s", "latency_us", "errors",
            "server_cpu_s", "server_rss_bytes", "client_bound")


def faulty(mode: str, *extra: str) -> runner.Target:
    return runner.Target(f"faulty-{mode}", (FIXTURE, "--mode", mode, *extra), protocols=("echo",))


def measure(target: runner.Target, concurrency: int, **settings: object) -> Run:
    values = {"duration": 1.0, "warmup": 0.1, "timeout": 5.0, **settings}
    return runner.measure(target, "echo", concurrency, runner.Settings(**values),  # type: ignore[arg-type]
                          use_perf=False)


@needs_loadgen
def test_wrong_bytes_are_counted_as_errors() -> None:
    record = measure(faulty("wrong"), 4, duration=0.5)
    assert record.errors["wrong"] > 0, record
    assert record.status in ("errors", "failed"), record
    assert "wrong" in record.reason


@needs_loadgen
def test_known_delay_is_measured() -> None:
    record = measure(faulty("delay", "--delay-ms", "20"), 2)
    assert record.status == "ok", record
    p50 = record.latency_us["p50"]
    assert 18_000 <= p50 <= 22_000, f"p50 {p50} us for a 20 ms delay"
    # closed loop, 2 connections, 20 ms each: ~100 req/s
    assert 70 <= record.requests_per_s <= 105, record.requests_per_s


@needs_loadgen
def test_open_loop_shows_a_stall_that_closed_loop_hides() -> None:
    stall = ("--stall-after", "0.6", "--stall-s", "1.0")
    opened = measure(faulty("stall", *stall), 2, duration=2.5, warmup=0.0, rate=200.0)
    closed = measure(faulty("stall", *stall), 2, duration=2.5, warmup=0.0)
    assert opened.status == "ok" and closed.status == "ok", (opened, closed)
    # open loop: ~200 requests were due during the stall, each waited for it
    assert opened.latency_us["p99"] >= 800_000, opened.latency_us
    assert opened.latency_us["max"] >= 900_000, opened.latency_us
    # closed loop: only the 2 requests in flight waited; the percentiles do not see it
    assert closed.latency_us["max"] >= 900_000, closed.latency_us
    assert closed.latency_us["p99"] < 100_000, closed.latency_us


@needs_loadgen
def test_crash_mid_run_is_reported_not_hung_on() -> None:
    began = time.monotonic()
    record = measure(faulty("crash", "--crash-after", "0.3"), 4, duration=2.0, timeout=1.0)
    assert time.monotonic() - began < 15
    assert record.status == "failed" and record.failure == Failure.DIED, record
    assert "died" in record.reason or "exit" in record.reason, record.reason


def test_a_server_that_cannot_start_is_a_result() -> None:
    target = runner.Target("nothing", ("-c", "import sys; print('oops', file=sys.stderr); "
                                             "sys.exit(3)"))
    record = runner.measure(target, "echo", 1, runner.Settings(duration=0.2, warmup=0.0))
    assert record.status == "skipped" and record.reason == "oops", record
    assert record.failure is None and "failure" not in record.to_dict()
    broken = runner.Target("broken", ("-c", "import sys; sys.exit('no such module')"))
    record = runner.measure(broken, "echo", 1, runner.Settings(duration=0.2, warmup=0.0))
    assert record.status == "failed" and record.failure == Failure.START, record
    assert record.to_dict()["failure"] == "start"


@needs_loadgen
def test_quick_cli_writes_every_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "bench", "--quick", "--servers", "epoll,asyncio",
            "--concurrency", "10", "--duration", "0.5", "--warmup", "0.1", "--out", str(out),
            "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=runner.REPO)
    assert done.returncode == 0, done.stderr
    assert "echo" in done.stdout and "epoll" in done.stdout
    document = json.loads((out / "results.json").read_text())
    assert {r["server"] for r in document["runs"]} == {"epoll", "asyncio"}
    for run in document["runs"]:
        for key in REQUIRED:
            assert key in run, key
        assert set(LATENCY_KEYS) <= set(run["latency_us"])
        assert run["requests_per_s"] > 0 and run["status"] == "ok", run
    for key in ("machine", "kernel", "python", "packages"):
        assert key in document["meta"]
    for name in ("results.csv", "summary.md", "throughput_echo.png", "latency_http.png"):
        assert (out / name).stat().st_size > 0, name
    compared = subprocess.run([sys.executable, "-m", "bench", "compare", str(out), str(out)],
                              capture_output=True, text=True, timeout=30, cwd=runner.REPO)
    assert compared.returncode == 0 and "epoll" in compared.stdout, compared.stderr


def test_bad_flags_exit_2() -> None:
    for argv in (["--servers", "no-such-server"], ["--concurrency", "ten"],
                 ["--workloads", "gopher"], ["--duration", "-1"]):
        done = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True,
                              text=True, timeout=30, cwd=runner.REPO)
        assert done.returncode == 2, (argv, done.stderr)
        assert "error" in done.stderr


def fake_run(server: str, rps: float, status: str = "ok", c: int = 10, errors: int = 0) -> Run:
    return Run(server=server, workload="echo", concurrency=c, status=Status(status),
               requests_per_s=rps, errors_total=errors, errors={"timeout": errors},
               latency_us=dict.fromkeys(LATENCY_KEYS, 100))


def test_aggregate_median_spread_best_and_ranking() -> None:
    runs = [fake_run("a", v) for v in (900, 1000, 1100)]
    runs += [fake_run("b", v) for v in (1500, 1600, 1700)]
    runs += [fake_run("c", 5000, "errors", errors=3)] * 3  # fast only because it dropped clients
    results = aggregate.aggregate(runs)
    a = next(r for r in results if r.server == "a")
    assert a.requests_per_s == 1000 and a.spread_pct == 10.0
    assert aggregate.best_by_column(results, "echo") == {10: {"b"}}
    assert [r["server"] for r in aggregate.ranking(results)] == ["b", "a", "c"]
    table = tables.throughput_table(results, "echo")
    assert "*1.60k" in table and "5.00k" in table and "!" in table


def test_compare_flags_only_changes_beyond_the_spread() -> None:
    from bench import compare

    old = aggregate.aggregate([fake_run("a", v) for v in (900, 1000, 1100)])[0]
    same = aggregate.aggregate([fake_run("a", v) for v in (950, 1050, 1080)])[0]
    faster = aggregate.aggregate([fake_run("a", v) for v in (1500, 1600, 1650)])[0]
    assert not compare.significant(old, same)
    assert compare.significant(old, faster)
    rows = compare.compare_rows([old], [faster])
    assert rows[0][-1] == "faster" and rows[0][6] == "+60.0%"
