"""Shared fixtures: raise the descriptor limit once for the test process."""

from __future__ import annotations

import resource


def pytest_configure() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
