"""Shared fixtures: raise the descriptor limit once for the test process; a private
Redis per test module that asks for ``shared_redis``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.redis import PrivateRedis
from servers.cli import raise_descriptor_limit
from tests.private_redis import private_redis


def pytest_configure() -> None:
    raise_descriptor_limit()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[PrivateRedis]:
    """One private redis-server for a test module (skipped where none can start)."""
    with private_redis() as instance:
        yield instance
