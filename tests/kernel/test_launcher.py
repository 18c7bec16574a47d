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
    proc, port = helpers.launch(module, "--proto", proto, "--workers", "1")
    try:
        with helpers.connect(port) as s:
            if proto == "echo":
                assert helpers.exchange(s, b"hi\0there", 8) == b"hi\0there"
            else:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        start_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - start_stop < 5
        name = "khttpd" if module == "khttpd" else "kecho"
        assert name not in helpers.loaded_modules()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_wrong_protocol_is_skipped() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "servers.kmod_launch", "--module", "khttpd", "--proto", "echo"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("skipped: ")
