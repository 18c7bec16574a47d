"""A private ``redis-server`` for a test, or the test skipped with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.redis import PrivateRedis, RedisError


@contextmanager
def private_redis(**options: int) -> Iterator[PrivateRedis]:
    """A started :class:`bench.redis.PrivateRedis`, stopped and removed after the block;
    skips the test where none can start (no redis-server installed)."""
    try:
        instance = PrivateRedis(**options)  # type: ignore[arg-type]
    except RedisError as exc:
        pytest.skip(str(exc))
    with instance:
        yield instance
