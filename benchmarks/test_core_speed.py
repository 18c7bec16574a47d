"""The protocol core alone: µs per HTTP request parsed and answered, no sockets.

Run with ``pytest benchmarks/test_core_speed.py`` (or ``pytest --benchmark-only``;
a few seconds). Each case feeds a session what a keep-alive client sends, takes
the output and reports it sent, as a driver does: the benchmark page, a pipelined
batch of :data:`BATCH` page requests in one read, and a 404. This is the Python
the core costs per request, which the drivers' figures include; ``extra_info``
holds µs per request (for the batch: the round's time over its requests).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from servers.core import wire
from servers.core.http import HttpApp, HttpSession
from servers.settings import Settings

PAGE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
MISSING = b"GET /missing HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BATCH = 16
CASES = {"page": (PAGE, 1), "pipelined": (PAGE * BATCH, BATCH), "404": (MISSING, 1)}


def _round(session: HttpSession, data: bytes) -> list[Any]:
    now = time.monotonic()
    session.received(data, now)
    out = session.take_output()
    session.sent(sum(len(item) for item in out), now)
    return out


@pytest.mark.parametrize("case", CASES)
def test_core_speed(benchmark: Any, case: str) -> None:
    data, requests = CASES[case]
    session = HttpApp(Settings(proto="http")).new_session(time.monotonic())
    answer = b"".join(_round(session, data))
    status = b"404 Not Found" if case == "404" else b"200 OK"
    body = wire.ERROR_BODIES[404] if case == "404" else wire.PAGE_BODY
    assert answer.count(b"HTTP/1.1 " + status + b"\r\n") == requests
    assert answer.count(body) == requests and answer.endswith(body)
    benchmark.group = "core"
    benchmark(_round, session, data)
    assert not session.closing and not session.paused  # every round was answered whole
    benchmark.extra_info["requests_per_round"] = requests
    benchmark.extra_info["us_per_request"] = benchmark.stats.stats.median / requests * 1e6
