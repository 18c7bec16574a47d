"""Differential fuzzing: every HTTP server of the registry that runs here answers random
byte streams (tests/http_grammar.py) with the core's bytes, ``Date`` aside.

Each server starts once for the module; every stream goes to it over a fresh
connection, in the grammar's pieces, then the client half-closes and reads until the
server closes. The reference is the core itself, in-process and socket-free
(tests/differential.py), over the same file root. A difference fails with the stream
Hypothesis shrank it to and both answers. Python backends share the core, so what
they can get wrong is in the drivers (splits, lingering close); they get fewer cases
than c-epoll, whose parser is its own. Seeded (``derandomize``), so a failure
reproduces. ``ZOO_FUZZ_CASES=N`` runs N streams per server (a long campaign).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servers.registry import Entry
from tests.differential import FILE_TARGETS, PAGE_TARGETS, core_answer, make_root, socket_answer
from tests.http_grammar import streams
from tests.servers import RunningServer, ids, running_server, user_space_entries

ENTRIES = [e for e in user_space_entries() if "http" in e.protocols]
CAMPAIGN = int(os.environ.get("ZOO_FUZZ_CASES", "0"))
# A campaign outlasts the suite's per-test timeout: allow 0.1 s a stream (about 20 ms
# measured) on top of it.
pytestmark = pytest.mark.timeout(120 + CAMPAIGN // 10)
# The default run stays well under a minute on 2 cores (about 30 s measured): most
# cases where the parser is the server's own.
DEFAULT_CASES = {"python": 40, "native": 600}


def cases(entry: Entry) -> int:
    return CAMPAIGN or DEFAULT_CASES.get(entry.kind, 40)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("fuzz") / "root")


@pytest.fixture(scope="module", params=ENTRIES, ids=ids(ENTRIES))
def server(request: pytest.FixtureRequest,
           root: Path) -> Iterator[tuple[RunningServer, Path | None]]:
    entry: Entry = request.param
    served = root if entry.static_files else None
    extra = ("--root", str(served)) if served is not None else ()
    # Long timeouts: an answer that only a deadline produces is a failure, not a pass.
    with running_server(entry, "http", "--header-timeout", "30", "--idle-timeout", "30",
                        *extra) as srv:
        yield srv, served


def test_same_answer_as_core(server: tuple[RunningServer, Path | None]) -> None:
    srv, served = server
    targets = FILE_TARGETS if served is not None else PAGE_TARGETS

    @settings(max_examples=cases(srv.entry), derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        stream = data.draw(streams(targets), label="stream")
        expected = core_answer(stream.data, served)
        got = socket_answer(srv.address, stream.pieces)
        assert got == expected, (
            f"{srv.entry.name} differs from the core\nstream: {stream!r}\n"
            f"core:   {expected!r}\nserver: {got!r}")

    check()
