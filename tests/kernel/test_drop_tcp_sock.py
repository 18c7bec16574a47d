"""drop_tcp_sock: a TIME-WAIT socket blocks a restart on its port until dropped."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.kernel import helpers

PROC = Path("/proc/net/drop_tcp_sock")
TIME_WAIT = "06"


def drop(line: str) -> None:
    with PROC.open("w") as f:
        f.write(line)


def test_time_wait_dropped_then_reload_on_same_port(port: int) -> None:
    helpers.load("drop_tcp_sock")
    assert PROC.exists()
    helpers.load("kecho", port=port, reuseaddr=False)
    with helpers.connect(port) as c:
        assert helpers.exchange(c, b"ping\0", 5) == b"ping\0"
        client_port = c.getsockname()[1]
        # The server closes first (unload shuts every connection down), so its
        # end of the connection is the one left in TIME-WAIT.
        helpers.unload("kecho")
        assert helpers.closed_by_peer(c, 5.0)
    assert TIME_WAIT in helpers.tcp_states(port)

    with pytest.raises(OSError) as busy:
        helpers.load("kecho", port=port, reuseaddr=False)
    assert busy.value.errno == errno.EADDRINUSE

    drop(f"127.0.0.1:{port} 127.0.0.1:{client_port}\n")
    assert TIME_WAIT not in helpers.tcp_states(port)

    helpers.load("kecho", port=port, reuseaddr=False)
    with helpers.connect(port) as c:
        assert helpers.exchange(c, b"again", 5) == b"again"


def test_drop_established_connection(port: int) -> None:
    helpers.load("drop_tcp_sock")
    helpers.load("kecho", port=port)
    with helpers.connect(port) as c:
        assert helpers.exchange(c, b"x", 1) == b"x"
        client_port = c.getsockname()[1]
        drop(f"127.0.0.1:{client_port} 127.0.0.1:{port}")
        assert helpers.closed_by_peer(c, 5.0)


@pytest.mark.parametrize(("line", "err"), [
    ("garbage", errno.EINVAL),
    ("127.0.0.1:1 300.0.0.1:2", errno.EINVAL),
    ("127.0.0.1:1 127.0.0.1:70000", errno.EINVAL),
    ("127.0.0.1:1 127.0.0.1:2", errno.ENOENT),
])
def test_bad_lines(line: str, err: int) -> None:
    helpers.load("drop_tcp_sock")
    with pytest.raises(OSError) as exc:
        drop(line)
    assert exc.value.errno == err
