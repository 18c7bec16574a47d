"""Static files under a root: safe path resolution, content types, listings.

A request path is percent-decoded once, split into segments and joined under
the root; any ``..`` segment, NUL byte or resolved path (symlinks followed)
outside the root is refused, so no byte from outside the root is ever served.
"""

from __future__ import annotations

import html
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

# Only the built-in table: the same answer on every machine, whatever /etc/mime.types says.
_TYPES = mimetypes.MimeTypes()
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "image/svg+xml")


def content_type(name: str) -> str:
    guessed, _ = _TYPES.guess_type(name, strict=False)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith(_TEXT_TYPES):
        return f"{guessed}; charset=utf-8"
    return guessed


@dataclass(frozen=True)
class Resolved:
    """What a request path names: a regular file or a directory, by its real path."""

    path: str
    is_dir: bool


class FileRoot:
    """Maps request paths to files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"--root {root}: not a directory")

    def resolve(self, raw_path: bytes) -> Resolved | None:
        """The file or directory ``raw_path`` names, or None if missing or outside the root."""
        decoded = unquote_to_bytes(raw_path)
        if b"\x00" in decoded or b"\\" in decoded:
            return None
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            return None
        segments = [s for s in text.split("/") if s not in ("", ".")]
        if any(s == ".." for s in segments):
            return None
        real = os.path.realpath(os.path.join(self.root, *segments))
        if real != self.root and not real.startswith(self.root + os.sep):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return Resolved(real, True)
        if stat.S_ISREG(st.st_mode):
            return Resolved(real, False)
        return None

    def listing(self, resolved: Resolved, url_path: str) -> bytes:
        """An HTML page with a link per entry of a directory, sorted, directories first."""
        base = url_path if url_path.endswith("/") else url_path + "/"
        entries = []
        with os.scandir(resolved.path) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                entries.append((not is_dir, entry.name + ("/" if is_dir else "")))
        entries.sort()
        title = html.escape(base)
        rows = "".join(
            f'<li><a href="{html.escape(quote(base + name))}">{html.escape(name)}</a></li>\n'
            for _, name in entries
        )
        page = (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}"
            f"</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n{rows}</ul></body></html>\n"
        )
        return page.encode("utf-8")
