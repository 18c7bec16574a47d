"""khttpd under differential fuzzing: random HTTP byte streams (tests/http_grammar.py)
get the core's bytes, ``Date`` aside, over the same file root.

The host's tests/test_fuzz_differential.py does this for every user-space server;
here khttpd is loaded with ``root=`` a small tree and each stream goes over a fresh
connection in the grammar's pieces, then the client half-closes and reads to the
close. Seeded and bounded (200 streams, about 30 s in the guest);
``ZOO_FUZZ_CASES=N`` runs a campaign of N streams.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential import FILE_TARGETS, core_answer, make_root, socket_answer
from tests.http_grammar import streams
from tests.kernel import helpers

# About 0.15 s a stream in the guest (measured under KVM, against 0.02 s on the host):
# 200 streams keep the default run near 30 s.
CASES = int(os.environ.get("ZOO_FUZZ_CASES", "0")) or 200
# A campaign outlasts the suite's per-test timeout: allow 0.3 s a stream on top of it.
pytestmark = pytest.mark.timeout(120 + CASES * 3 // 10)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root")


def test_khttpd_same_answer_as_core(port: int, root: Path) -> None:
    # Long timeouts: an answer that only a deadline produces is a failure, not a pass.
    helpers.load("khttpd", port=port, root=root, header_timeout=30, idle_timeout=30)
    helpers.connect(port).close()
    address = ("127.0.0.1", port)

    @settings(max_examples=CASES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        stream = data.draw(streams(FILE_TARGETS), label="stream")
        expected = core_answer(stream.data, root)
        got = socket_answer(address, stream.pieces)
        assert got == expected, (
            f"khttpd differs from the core\nstream: {stream!r}\n"
            f"core:   {expected!r}\nkhttpd: {got!r}")

    check()
