"""The response bytes every HTTP server agrees on, read from ``wire.json``.

``wire.json`` is the single source of truth shared with the kernel modules and
the C server; this module turns it into response heads.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path

WIRE_FILE = Path(__file__).with_name("wire.json")
_WIRE = json.loads(WIRE_FILE.read_text(encoding="utf-8"))

SERVER: str = _WIRE["server"]
PAGE_BODY: bytes = _WIRE["page"]["body"].encode()
PAGE_CONTENT_TYPE: str = _WIRE["page"]["content_type"]
ERROR_CONTENT_TYPE: str = _WIRE["error_content_type"]
ALLOW: str = _WIRE["allow"]
# "errors" every HTTP server sends; "core_errors" only this core (403 under --root, 500).
_ERRORS = {int(k): v for group in ("errors", "core_errors")
           for k, v in _WIRE[group].items() if k.isdigit()}
GUESTBOOK: dict = _WIRE["guestbook"]
REASONS: dict[int, str] = {
    200: "OK", **{code: v["reason"] for code, v in _ERRORS.items()},
    **{int(code): reason for code, reason in GUESTBOOK["reasons"].items()},
}
ERROR_BODIES: dict[int, bytes] = {code: v["body"].encode() for code, v in _ERRORS.items()}

KEEP = 0
CLOSE = 1
KEEP_10 = 2  # an HTTP/1.0 client that asked for keep-alive
_CONNECTION_LINE = {
    KEEP: b"",
    CLOSE: b"Connection: close\r\n",
    KEEP_10: b"Connection: keep-alive\r\n",
}


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class DateCache:
    """The ``Date`` value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        return self.at(int(time.time()))

    def at(self, second: int) -> str:
        """The value for ``second`` (a ``time.time()`` truncated), formatted when it changed."""
        if second != self._second:
            self._second = second
            self._value = http_date(second)
        return self._value


def compose_head(
    status: int,
    date: str,
    content_type: str,
    length: int,
    connection: int,
    *,
    last_modified: str | None = None,
    allow: bool = False,
    location: str | None = None,
) -> bytes:
    """The status line and headers, in the order WIRE.md fixes."""
    parts = [
        f"HTTP/1.1 {status} {REASONS[status]}\r\nServer: {SERVER}\r\nDate: {date}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
    ]
    if last_modified is not None:
        parts.append(f"Last-Modified: {last_modified}\r\n")
    if location is not None:
        parts.append(f"Location: {location}\r\n")
    if allow:
        parts.append(f"Allow: {ALLOW}\r\n")
    head = "".join(parts).encode("latin-1")
    return head + _CONNECTION_LINE[connection] + b"\r\n"


def error_response(status: int, date: str, connection: int, *, head_only: bool = False) -> bytes:
    body = ERROR_BODIES[status]
    head = compose_head(
        status, date, ERROR_CONTENT_TYPE, len(body), connection, allow=status == 405
    )
    return head if head_only else head + body
