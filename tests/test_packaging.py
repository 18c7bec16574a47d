"""Packaging both ways: a wheel installed into a fresh virtualenv runs from the checkout's
root and from elsewhere, its native modules found although a source folder is named like
its packages (the checkout's ``bench/`` once shadowed the installed ``bench._loadgen``).

The wheel is built with the project's own build tools, and installed without its
dependencies and without an index (no network): what is checked is where Python finds
the code, so only the parts that need no third-party package are run, ``python -m
servers --json`` and a one-second ``python -m bench.loadgen`` against a server of the zoo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.registry import ENTRIES
from tests.servers import running_server

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ("zoo_loadgen", "zoo_cepoll")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, the python of a fresh virtualenv with only that wheel installed)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("tcp_zoo-*.whl")
    venv.create(tmp / "venv", with_pip=True)
    python = tmp / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr[-3000:]
    yield wheel, python


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_wheel_holds_the_packages_and_top_level_native_modules(
        wheel_env: tuple[Path, Path]) -> None:
    wheel, _ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0].split(".")[0] for name in names if "dist-info" not in name}
    assert tops == {"servers", "bench", *NATIVE}, tops  # not tests/, not benchmarks/
    assert "servers/core/wire.json" in names


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_installed_wheel_runs(wheel_env: tuple[Path, Path], tmp_path: Path, where: str) -> None:
    _, python = wheel_env
    cwd = ROOT if where == "checkout" else tmp_path
    listed = run(python, cwd, "-m", "servers", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == [e.name for e in ENTRIES]

    found = run(python, cwd, "-c", "import zoo_loadgen; print(zoo_loadgen.__file__)")
    assert found.returncode == 0, found.stderr
    if where == "elsewhere":  # nothing of the checkout on the path: the wheel's own
        assert Path(found.stdout.strip()).is_relative_to(python.parent.parent), found.stdout

    with running_server("c-epoll", "echo") as server:
        load = run(python, cwd, "-m", "bench.loadgen", "--target",
                   f"{server.host}:{server.port}", "--workload", "echo", "-c", "4",
                   "-d", "1", "--json")
    assert load.returncode == 0, load.stderr
    result = json.loads(load.stdout)
    assert result["requests"] > 0 and not any(result["errors"].values()), result
