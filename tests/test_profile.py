"""bench.profile on a real process: py-spy samples it, the busy function tops the table;
and so does the perf fallback, on a Python 3.12+ with its perf trampoline.

Skipped, with the reason, where py-spy is missing or may not attach (ptrace), and for
perf where perf or a Python 3.12+ is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cli, profile

BUSY = """
import time
def spin_here():
    end = time.monotonic() + 20
    while time.monotonic() < end:
        sum(range(1000))
print("ready", flush=True)
spin_here()
"""


@pytest.fixture
def spinning(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    why = profile.unavailable()
    if why is not None:
        pytest.skip(why)
    script = tmp_path / "busy_script.py"
    script.write_text(BUSY)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_sampled_stacks_name_the_busy_function(spinning: subprocess.Popen[str],
                                                tmp_path: Path) -> None:
    sampler = profile.Sampler(spinning.pid, str(tmp_path / "raw.txt"), None)
    time.sleep(1.0)
    stacks, why = sampler.stop()
    assert stacks is not None, why
    assert sum(stacks.values()) >= 50  # 250 samples/s for about a second
    # one root frame, the command without the process id
    assert {stack[0] for stack in stacks} == {f'process "{sys.executable} '
                                              f'{tmp_path / "busy_script.py"}"'}
    top = profile.top_self(stacks)
    assert any(name.startswith("spin_here") for name, _, _ in top[:2]), top
    assert abs(sum(share for _, _, share in profile.top_self(stacks, 1000)) - 1) < 1e-9
    svg = profile.flame_svg(stacks, "spin")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "spin_here" in svg and f"({sum(stacks.values())} samples)" in svg


def test_collapsed_lines_merge_processes_and_skip_junk() -> None:
    text = ('process 11:"python -m x";main (x.py);work (x.py) 3\n'
            'process 12:"python -m x";main (x.py);work (x.py) 2\n'
            'process 12:"python -m x";main (x.py) 1\n'
            "not a stack line\n")
    stacks = profile.parse_collapsed(text)
    assert stacks == Counter({('process "python -m x"', "main (x.py)", "work (x.py)"): 5,
                              ('process "python -m x"', "main (x.py)"): 1})
    assert profile.top_self(stacks) == [("work (x.py)", 5, 5 / 6), ("main (x.py)", 1, 1 / 6)]


PERF_SCRIPT = """\
4242\x20
\tffffffff81360092 handle_softirqs ([kernel.kallsyms])
\t          1cef8d _PyObject_Free (/opt/py/lib/libpython3.12.so.1.0)
\t          1117e3 _PyEval_EvalFrameDefault (/opt/py/lib/libpython3.12.so.1.0)
\t    7f3f2b50d7b6 py::Loop.spin:/srv/app.py (/tmp/perf-4242.map)
\t    7f3f2b50d000 py::main:/srv/app.py (/tmp/perf-4242.map)
\t               0 [unknown] ([unknown])

4242\x20
\t    7f3f2b50d7b6 py::Loop.spin:/srv/app.py (/tmp/perf-4242.map)

4243\x20
\t          1cef8d _PyObject_Free (/opt/py/lib/libpython3.12.so.1.0)

not a sample
"""


def test_perf_script_read_as_stacks() -> None:
    stacks = profile.parse_perf_script(PERF_SCRIPT, {4242: "python app.py"})
    native = ("_PyEval_EvalFrameDefault [libpython3.12.so.1.0]",
              "_PyObject_Free [libpython3.12.so.1.0]", "handle_softirqs [kernel.kallsyms]")
    assert stacks == Counter({
        ('process "python app.py"', "main (/srv/app.py)", "Loop.spin (/srv/app.py)",
         *native): 1,
        ('process "python app.py"', "Loop.spin (/srv/app.py)"): 1,
        ('process "4243"', "_PyObject_Free [libpython3.12.so.1.0]"): 1,
    })
    # what a Python function called natively is its own time; no Python frame: the leaf
    assert profile.top_self(stacks) == [("Loop.spin (/srv/app.py)", 2, 2 / 3),
                                        ("_PyObject_Free [libpython3.12.so.1.0]", 1, 1 / 3)]


def _python_with_trampoline() -> str | None:
    """An interpreter of 3.12 or later: this one, $ZOO_PERF_PYTHON, python3.1x on PATH,
    or one pyenv installed."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [sys.executable, os.environ.get("ZOO_PERF_PYTHON", "")]
    candidates += [shutil.which(f"python3.{minor}") or "" for minor in range(12, 16)]
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "3.1[2-9]*", "bin",
                                                "python3")))
    for python in filter(None, candidates):
        try:
            done = subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info "
                                   "< (3, 12))"], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return python
    return None


def test_perf_fallback_names_python_functions(tmp_path: Path) -> None:
    python = _python_with_trampoline()
    if python is None:
        pytest.skip("no Python 3.12+ here for the perf trampoline ($ZOO_PERF_PYTHON)")
    why = profile.perf_unavailable(python)
    if why is not None:
        pytest.skip(f"perf cannot sample {python}: {why}")
    assert profile.choose("perf", python) == ("perf", "--profiler perf: sampling with perf "
                                              "and CPython's perf trampoline")
    script = tmp_path / "busy_script.py"
    script.write_text(BUSY)
    proc = subprocess.Popen([python, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPERFSUPPORT": "1"})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sampler = profile.PerfSampler(proc.pid, str(tmp_path / "busy"), None, python)
        time.sleep(1.0)
        stacks, why = sampler.stop()
    finally:
        proc.kill()
        proc.wait()
    assert stacks is not None, why
    assert sum(stacks.values()) >= 50  # 250 samples/s for about a second
    assert {stack[0] for stack in stacks} == {f'process "{python} {script}"'}
    top = profile.top_self(stacks)
    assert top[0][0] == f"spin_here ({script})", top
    svg = profile.flame_svg(stacks, "spin")
    assert f"spin_here ({script})" in svg and "[libpython3." in svg  # native frames too
    assert not list(tmp_path.glob("busy*.perf.data"))
    assert not os.path.exists(f"/tmp/perf-{proc.pid}.map")  # the trampoline's map, read


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="this Python has the trampoline")
def test_perf_fallback_refused_before_312() -> None:
    tool, note = profile.choose("perf")
    assert tool is None
    assert note.startswith("--profiler perf; perf fallback unavailable: ")
    assert ("needs Python 3.12+ (its perf trampoline), the server runs 3." in note
            or note.endswith("perf is not installed")), note


def test_profiler_needs_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["--profiler", "perf"]) == 2
    assert "--profiler chooses the sampler of --profile: give --profile too" in \
        capsys.readouterr().err
