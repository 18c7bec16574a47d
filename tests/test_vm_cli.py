"""``python -m bench.vm bench ARGS`` is ``python -m bench --vm ARGS``: the same parser
and server list, flags passed through whatever comes first (checked where they are
refused, before any guest boots)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_bench_flags_reach_python_m_bench() -> None:
    via_vm = run("bench.vm", "bench", "--servers", "nope", "--quick")
    direct = run("bench", "--vm", "--servers", "nope", "--quick")
    assert via_vm.returncode == direct.returncode == 2
    last = direct.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m bench: error: --servers: unknown server(s) nope;"), last
    assert via_vm.stderr.strip().splitlines()[-1] == last


def test_bench_help_is_python_m_bench_help() -> None:
    out = run("bench.vm", "bench", "--help")
    assert out.returncode == 0 and "--vm" in out.stdout and "--servers" in out.stdout


def test_unknown_flag_of_run_is_refused() -> None:
    out = run("bench.vm", "run", "--nope", "--", "true")
    assert out.returncode == 2 and "unrecognized arguments: --nope" in out.stderr
