"""Static files under a root: safe path resolution, content types, listings.

A request path is percent-decoded once, split into segments and joined under
the root, all in bytes (a name need not be UTF-8); any ``..`` segment, NUL byte
or resolved path (symlinks followed) outside the root is refused, so no byte
from outside the root is ever served. A listing names every entry whatever
bytes its name holds: the link is percent-encoded from the raw bytes, the text
is HTML-escaped, with undecodable bytes and control characters shown as
``\\xNN``. Reading a file or directory the server may not read raises
PermissionError, which the HTTP session answers with 403.
"""

from __future__ import annotations

import html
import mimetypes
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

# Only the built-in table: the same answer on every machine, whatever /etc/mime.types says.
_TYPES = mimetypes.MimeTypes()
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "image/svg+xml")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def content_type(name: str | bytes) -> str:
    guessed, _ = _TYPES.guess_type(os.fsdecode(name), strict=False)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith(_TEXT_TYPES):
        return f"{guessed}; charset=utf-8"
    return guessed


def display_name(raw: bytes) -> str:
    """A name as HTML text: UTF-8 where it is, ``\\xNN`` for other bytes and control
    characters, then escaped (quotes included)."""
    text = raw.decode("utf-8", "backslashreplace")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return html.escape(text, quote=True)


@dataclass(frozen=True)
class Resolved:
    """What a request path names: a regular file or a directory, by its real path."""

    path: bytes
    is_dir: bool


class FileRoot:
    """Maps request paths to files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(self.root):
            raise ValueError(f"--root {root}: not a directory")

    def resolve(self, raw_path: bytes) -> Resolved | None:
        """The file or directory ``raw_path`` names, or None if missing or outside the root."""
        decoded = unquote_to_bytes(raw_path)
        if b"\x00" in decoded or b"\\" in decoded:
            return None
        segments = [s for s in decoded.split(b"/") if s not in (b"", b".")]
        if any(s == b".." for s in segments):
            return None
        real = os.path.realpath(os.path.join(self.root, *segments))
        if real != self.root and not real.startswith(self.root + b"/"):
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

    def listing(self, resolved: Resolved, url_path: bytes) -> bytes:
        """An HTML page with a link per entry of a directory, sorted, directories first.

        ``url_path`` is the decoded request path. Raises PermissionError when the
        directory cannot be read.
        """
        base = url_path if url_path.endswith(b"/") else url_path + b"/"
        entries = []
        with os.scandir(resolved.path) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                entries.append((not is_dir, entry.name + (b"/" if is_dir else b"")))
        entries.sort()
        title = display_name(base)
        rows = "".join(
            f'<li><a href="{html.escape(quote(base + name, safe="/"))}">'
            f"{display_name(name)}</a></li>\n"
            for _, name in entries
        )
        page = (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}"
            f"</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n{rows}</ul></body></html>\n"
        )
        return page.encode("utf-8")
