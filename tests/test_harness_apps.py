"""``python -m bench`` with the app workloads: files, the guestbook and its backend wait.

One short real run: the harness generates the files, starts its own Redis,
calibrates the wait, starts each server with what the workload needs, and
reports MB/s for files, the Little's-law limit and share for the guestbook, and
``n/a`` (with the reason) for a server that cannot serve a workload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import cli, runner

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed (./zoo setup installs it)")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    code = cli.run(["--servers", "threaded,c-epoll,khttpd", "--workloads", "file,guestbook",
                    "--concurrency", "4", "--duration", "0.4", "--warmup", "0.1",
                    "--repeat", "1", "--backend-wait-ms", "5", "--size", "20000",
                    "--no-perf", "--quiet", "--out", str(out)])
    assert code == 0
    return json.loads((Path(out) / "results.json").read_text())


def row(results: dict, server: str, workload: str) -> dict:
    (found,) = [r for r in results["runs"] if r["server"] == server
                and r["workload"] == workload]
    return found


def test_file_rows_have_throughput_in_bytes(results: dict) -> None:
    r = row(results, "threaded", "file")
    assert r["status"] == "ok", r["reason"]
    assert r["mb_per_s"] > 0 and r["cpu_us_per_mb"] > 0
    assert results["meta"]["apps"]["file_size"] == 20000


def test_guestbook_rows_have_the_littles_law_limit(results: dict) -> None:
    (wait,) = results["meta"]["apps"]["backend_wait"]
    assert wait["asked_ms"] == 5 and wait["measured_ms"] >= 4.5
    r = row(results, "threaded", "guestbook@5ms")
    assert r["status"] == "ok", r["reason"]
    assert r["littles_limit"] == pytest.approx(4 / (wait["measured_ms"] / 1000))
    assert 0 < r["littles_share"] <= 1.2  # nobody beats the limit (1.2: timing slack)
    assert r["backend_wait_measured_ms"] == wait["measured_ms"]


def test_servers_that_cannot_serve_a_workload_are_na_with_the_reason(results: dict) -> None:
    assert row(results, "c-epoll", "file")["reason"] == "n/a: no static files in c-epoll"
    assert row(results, "c-epoll", "guestbook@5ms")["status"] == "ok"  # the guestbook in C
    kernel = row(results, "khttpd", "guestbook@5ms")
    assert (kernel["status"], kernel["reason"]) == ("n/a", "n/a: no guestbook in the kernel")


def test_labels_round_trip() -> None:
    assert runner.split_label(runner.label_for("guestbook", 2.5)) == ("guestbook", 2.5)
    assert runner.split_label("http") == ("http", None)


def test_wait_flag_without_a_guestbook_workload_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert cli.run(["--workloads", "http", "--backend-wait-ms", "5", "--quiet"]) == 2
    assert "no guestbook workload" in capsys.readouterr().err
