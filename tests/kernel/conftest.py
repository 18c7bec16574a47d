"""Kernel suite fixtures; every test here skips unless the modules can be loaded.

The modules are built for the installed Debian kernel and loaded in the QEMU guest
that ``python -m bench.vm test`` boots (it sets TCPZOO_GUEST=1). On the host, or
anywhere module loading is impossible, each test is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel import helpers

_REASON = helpers.why_not_runnable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    mark = pytest.mark.skip(reason=f"kernel suite: {_REASON}")
    for item in items:
        if "tests/kernel/" in item.nodeid.replace("\\", "/"):
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def _clean_modules() -> Iterator[None]:
    """Every test starts and ends with none of our modules loaded."""
    if _REASON is None:
        helpers.unload_all()
    yield
    if _REASON is None:
        helpers.unload_all()


@pytest.fixture
def port() -> int:
    return helpers.a_free_port()
