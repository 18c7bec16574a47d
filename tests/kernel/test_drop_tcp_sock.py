"""drop_tcp_sock: a TIME-WAIT socket blocks a restart on its port until dropped.

Also who may drop what: an entry acts on its own network namespace only, for a
caller with CAP_NET_ADMIN there, so an unprivileged user's namespace is no way
into the host's connections.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernel import helpers

PROC = Path("/proc/net/drop_tcp_sock")
TIME_WAIT = "06"
NOBODY = 65534


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
    ("1.2.3.4x:80 127.0.0.1:2", errno.EINVAL),
    ("127.0.0.1:1 127.0.0.1x:2", errno.EINVAL),
    ("127.0.0.1:1 127.0.0.1:+2", errno.EINVAL),
    ("127.0.0.1:1 127.0.0.1:2x", errno.EINVAL),
    ("127.0.0.1:1  127.0.0.1:2", errno.EINVAL),
])
def test_bad_lines(line: str, err: int) -> None:
    helpers.load("drop_tcp_sock")
    with pytest.raises(OSError) as exc:
        drop(line)
    assert exc.value.errno == err


@contextmanager
def namespace_of_nobody() -> Iterator[int]:
    """A process of uid nobody in a user and network namespace it made; yields its pid.

    The network namespace is made inside the user namespace once its map is
    written, so its /proc/PID/net/ entries belong to nobody (one unshare of both
    at once makes them before the map exists, owned by root).
    """
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "unshare", "--net", "sleep", "60"],
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
    )
    try:
        own = os.readlink("/proc/self/ns/net")

        def entered() -> bool:
            try:
                return os.readlink(f"/proc/{holder.pid}/ns/net") != own
            except OSError:
                return False

        assert helpers.poll_until(entered, 10.0), "unshare -Urn failed as nobody"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait(10)


def write_as(uid: int, path: str, line: str) -> int:
    """Open ``path`` and write ``line`` as ``uid`` (no groups); 0 or the errno."""
    pid = os.fork()
    if pid == 0:  # the child only makes system calls, then _exits
        code = 0
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_namespace_owner_cannot_drop_host_connection(port: int) -> None:
    """The attack: nobody writes a host four-tuple through its own namespace's entry."""
    helpers.load("drop_tcp_sock")
    helpers.load("kecho", port=port)
    with helpers.connect(port) as c, namespace_of_nobody() as pid:
        assert helpers.exchange(c, b"before", 6) == b"before"
        entry = f"/proc/{pid}/net/drop_tcp_sock"
        assert os.stat(entry).st_uid == NOBODY  # the namespace's entry is nobody's
        line = f"127.0.0.1:{c.getsockname()[1]} 127.0.0.1:{port}\n"
        assert write_as(NOBODY, entry, line) == errno.EPERM
        assert write_as(NOBODY, str(PROC), line) in (errno.EACCES, errno.EPERM)
        assert helpers.exchange(c, b"survives", 8) == b"survives"


def test_entry_acts_on_its_own_namespace_only(port: int) -> None:
    """Even root, through another namespace's entry, reaches only that namespace."""
    helpers.load("drop_tcp_sock")
    helpers.load("kecho", port=port)
    with helpers.connect(port) as c, namespace_of_nobody() as pid:
        line = f"127.0.0.1:{c.getsockname()[1]} 127.0.0.1:{port}\n"
        with pytest.raises(OSError) as exc, open(f"/proc/{pid}/net/drop_tcp_sock", "w") as f:
            f.write(line)
        assert exc.value.errno == errno.ENOENT
        assert helpers.exchange(c, b"survives", 8) == b"survives"


# Run in a new network namespace: make a TIME-WAIT socket, drop it through the
# namespace's own entry, print what happened.
_IN_NETNS = textwrap.dedent("""
    import socket, subprocess, time
    from pathlib import Path
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server closes first: its end goes to TIME-WAIT
    cli_port = cli.getsockname()[1]
    cli.recv(1)
    cli.close()

    def states():
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return [r.split()[3] for r in rows if int(r.split()[1].split(":")[1], 16) == port]

    deadline = time.monotonic() + 5
    while "06" not in states() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "06" in states(), states()
    try:
        Path("/proc/net/drop_tcp_sock").write_text(
            f"127.0.0.1:{port} 127.0.0.1:{cli_port}\\n")
    except OSError as exc:
        print("errno", exc.errno)
    print("time-wait left:", "06" in states())
""")


def test_namespace_with_its_own_hash_table(port: int) -> None:
    """A namespace made with tcp_child_ehash_entries has its own table: look there."""
    helpers.load("drop_tcp_sock")
    knob = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
    old = knob.read_text().strip()
    knob.write_text("1024")
    try:
        proc = subprocess.run(["unshare", "--net", sys.executable, "-c", _IN_NETNS],
                              capture_output=True, text=True, timeout=30)
    finally:
        knob.write_text(old)
    assert proc.returncode == 0, proc.stderr
    assert "errno" not in proc.stdout, proc.stdout
    assert "time-wait left: False" in proc.stdout, proc.stdout
