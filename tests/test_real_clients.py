"""Real HTTP clients (curl, ab -k, wrk, h2load --h1) against every HTTP backend: no failures."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from servers.core import wire
from tests.servers import RunningServer, entries_for, ids, running_server

HTTP = entries_for("http")


@pytest.fixture(scope="module", params=HTTP, ids=ids(HTTP))
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(request.param, "http") as srv:
        yield srv


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (the README's set-up installs it)")
    return path


def clients(server: RunningServer) -> int:
    """Concurrent connections a client may open: one for a server that serves one at a time."""
    return 10 if server.entry.concurrent else 1


def url(server: RunningServer, path: str = "/") -> str:
    return f"http://{server.host}:{server.port}{path}"


def test_curl(server: RunningServer) -> None:
    out = subprocess.run([tool("curl"), "-sS", "--fail", "-i", url(server), url(server)],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(b"HTTP/1.1 200 OK") == 2
    assert out.stdout.endswith(wire.PAGE_BODY)
    missing = subprocess.run([tool("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              url(server, "/missing")], capture_output=True, timeout=30)
    assert missing.stdout == b"404"


def test_ab_keepalive(server: RunningServer) -> None:
    out = subprocess.run([tool("ab"), "-k", "-q", "-n", "2000", "-c", str(clients(server)),
                          url(server)], capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"Complete requests:\s+2000", out.stdout)
    assert re.search(r"Failed requests:\s+0", out.stdout)
    assert re.search(r"Keep-Alive requests:\s+2000", out.stdout)
    assert "Non-2xx" not in out.stdout


def test_wrk(server: RunningServer) -> None:
    out = subprocess.run([tool("wrk"), "-t1", f"-c{clients(server)}", "-d1s", url(server)],
                         capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"(\d+) requests in", out.stdout)
    assert int(re.search(r"(\d+) requests in", out.stdout).group(1)) > 0
    assert "Socket errors" not in out.stdout
    assert "Non-2xx" not in out.stdout


def test_h2load_h1(server: RunningServer) -> None:
    out = subprocess.run([tool("h2load"), "--h1", "-n", "2000", "-c", str(clients(server)),
                          url(server)], capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"2000 succeeded, 0 failed, 0 errored", out.stdout), out.stdout
