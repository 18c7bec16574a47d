"""bench.profile on a real process: py-spy samples it, the busy function tops the table.

Skipped, with py-spy's reason, where py-spy is missing or may not attach (ptrace).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import profile

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
