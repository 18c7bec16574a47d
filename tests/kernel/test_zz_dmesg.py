"""Last in the suite: the kernel log shows no oops, BUG, WARNING or call trace."""

from __future__ import annotations

from tests.kernel import helpers


def test_kernel_log_clean() -> None:
    log = helpers.dmesg()
    bad = [line for line in log.splitlines() if helpers.BAD_LOG.search(line)]
    assert not bad, "\n".join(bad[:40])
