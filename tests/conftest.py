"""Shared fixtures: raise the descriptor limit once for the test process."""

from __future__ import annotations

from servers.cli import raise_descriptor_limit


def pytest_configure() -> None:
    raise_descriptor_limit()
