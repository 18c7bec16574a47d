"""The load generator's app workloads: static files checked by length and content.

A real server (epoll) serves a root the harness generated (bench.files); the load
generator must count clean answers as requests and every wrong length, wrong byte
or wrong status as an error of the right kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import files, loadgen
from tests.servers import RunningServer, running_server

SIZES = (1024, 65536, 1 << 20)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = files.make_root(tmp_path_factory.mktemp("root"), SIZES)
    (base / files.file_name(4096)).write_bytes(files.pattern(0, 4095) + b"\x00")  # last byte off
    (base / files.file_name(3000)).write_bytes(files.pattern(0, 2999))  # one byte short
    return base


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[RunningServer]:
    with running_server("epoll", "http", "--root", str(root)) as srv:
        yield srv


def test_pattern_is_not_periodic() -> None:
    block = files.pattern(0, 1 << 17)
    assert block[:256] != block[256:512] and block[:65536] != block[65536:]
    assert files.pattern(1000, 10) == block[1000:1010]


def test_make_root_is_idempotent_and_exact(tmp_path: Path) -> None:
    base = files.make_root(tmp_path, (1, 70000))
    first = (base / files.file_name(70000)).stat().st_mtime_ns
    files.make_root(tmp_path, (1, 70000))
    assert (base / files.file_name(70000)).stat().st_mtime_ns == first
    assert (base / files.file_name(70000)).read_bytes() == files.pattern(0, 70000)
    with pytest.raises(ValueError):
        files.make_root(tmp_path, (0,))


@pytest.mark.parametrize("size", SIZES)
def test_file_workload_clean(server: RunningServer, size: int) -> None:
    result = loadgen.run("127.0.0.1", server.port, "file", 4, 30.0, threads=1, size=size,
                         requests=200)
    assert result["errors_total"] == 0, result["errors"]
    assert result["requests"] == 200
    assert result["bytes_received"] > 200 * size


def test_wrong_content_is_caught(server: RunningServer) -> None:
    """Right length, a wrong byte in the first chunk's sample: each answer is wrong."""
    result = loadgen.run("127.0.0.1", server.port, "file", 2, 0.5, threads=1, size=4096)
    assert result["requests"] == 0
    assert result["errors"]["wrong"] >= 10


def test_wrong_length_is_caught(server: RunningServer) -> None:
    result = loadgen.run("127.0.0.1", server.port, "file", 2, 0.5, threads=1, size=3001,
                         path="/" + files.file_name(3000))
    assert result["requests"] == 0
    assert result["errors"]["wrong"] >= 10


def test_missing_file_is_a_status_error(server: RunningServer) -> None:
    result = loadgen.run("127.0.0.1", server.port, "file", 2, 0.5, threads=1, size=5)
    assert result["requests"] == 0
    assert result["errors"]["status"] >= 10


def test_bad_path_refused() -> None:
    with pytest.raises(ValueError):
        loadgen.run("127.0.0.1", 9, "file", 1, 1.0, path="no-slash")
