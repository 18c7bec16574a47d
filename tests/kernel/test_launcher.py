"""servers.kmod_launch: a module started and stopped like a server process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.kernel import helpers


@pytest.mark.parametrize(("module", "proto"), [
    ("kecho", "echo"), ("kecho-kthread", "echo"), ("khttpd", "http"),
])
def test_launch_serve_stop(module: str, proto: str) -> None:
    server = helpers.launch(module, "--proto", proto, "--workers", "1")
    try:
        helpers.assert_serves(server.port, proto)
        start_stop = time.monotonic()
        assert server.terminate(signal.SIGTERM, 10) == 0
        assert time.monotonic() - start_stop < 5
        name = "khttpd" if module == "khttpd" else "kecho"
        assert name not in helpers.loaded_modules()
    finally:
        server.kill_all()
        server.close()


def test_wrong_protocol_is_skipped() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "servers.kmod_launch", "--module", "khttpd", "--proto", "echo"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("skipped: ")
