"""The static-file workload's root: files of known sizes and content, made by the harness.

Byte ``i`` of every file is :func:`pattern_byte` ``(i)``, a sequence that does not
repeat every 256 bytes, so the load generator can check sampled bytes of each
answer against their offset (``file_byte`` in ``bench/native/loadgen.c`` is the same
formula: keep the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
DEFAULT_SIZES = (1 * KIB, 64 * KIB, 1 * MIB)
_BLOCK = 1 << 16  # generated a block at a time


def pattern_byte(i: int) -> int:
    return (i * 7 + (i >> 8) * 13 + (i >> 16) * 17 + 0x5A) & 0xFF


# Within the 256-byte block k, byte j is (7j + c_k) & 0xFF: one translation of a base block.
_BASE = bytes((7 * j) & 0xFF for j in range(256))
_SHIFT = [bytes((x + c) & 0xFF for x in range(256)) for c in range(256)]


def _block(k: int) -> bytes:
    return _BASE.translate(_SHIFT[pattern_byte(k << 8)])


def pattern(offset: int, count: int) -> bytes:
    """Bytes ``offset .. offset + count`` of every generated file."""
    if count <= 0:
        return b""
    first, last = offset >> 8, (offset + count - 1) >> 8
    data = b"".join(_block(k) for k in range(first, last + 1))
    start = offset - (first << 8)
    return data[start:start + count]


def file_name(size: int) -> str:
    return f"file-{size}.bin"


def url_path(size: int) -> str:
    """The request target of the file of ``size`` bytes under a server's ``--root``."""
    return "/" + file_name(size)


def make_root(root: str | os.PathLike[str], sizes: Iterable[int] = DEFAULT_SIZES) -> Path:
    """Write (or keep, when already right) one file per size under ``root``."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        if size < 1:
            raise ValueError(f"a file size is at least 1 byte, not {size}")
        path = base / file_name(size)
        if path.is_file() and path.stat().st_size == size:
            with path.open("rb") as f:
                if f.read(256) == pattern(0, min(256, size)):
                    continue
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as f:
            for offset in range(0, size, _BLOCK):
                f.write(pattern(offset, min(_BLOCK, size - offset)))
        tmp.replace(path)
    return base
