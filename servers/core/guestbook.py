"""The guestbook: the series' little web app over Redis, as sans-IO logic.

``GET /guestbook`` counts the visit (``INCR``) and shows the last entries
(``LRANGE``); with a backend wait of W ms it first blocks W ms in Redis
(``BLPOP`` on a key that is always empty), a real and exact backend latency.
``POST /guestbook`` takes an ``application/x-www-form-urlencoded`` ``name`` and
``message``, validates them, stores the entry (``RPUSH`` then ``LTRIM``, so the
list stays bounded) and answers ``303`` to ``/guestbook``.

This module never touches a socket. A request becomes a :class:`BackendCall` (the
RESP commands and how many replies end it); the driver performs it in its model's
own way and hands the decoded replies back, which become an :class:`AppResponse`.
A request that needs no backend (bad input) becomes an :class:`AppResponse` at once.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from urllib.parse import parse_qsl

from servers.core import resp, wire

_TEXT = wire.GUESTBOOK
PATH = _TEXT["path"].encode()
KEY_PREFIX = "tcpzoo:guestbook:"
VISITS_KEY = KEY_PREFIX + "visits"
ENTRIES_KEY = KEY_PREFIX + "entries"
WAIT_KEY = KEY_PREFIX + "wait"  # never written: BLPOP on it always times out
SHOWN = 20  # entries on the page, newest first
KEPT = 1000  # entries Redis keeps
MAX_NAME = 64  # characters
MAX_MESSAGE = 1000  # characters
FORM_TYPE = "application/x-www-form-urlencoded"
PAGE_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = wire.ERROR_CONTENT_TYPE
PAGE_MARKER: bytes = _TEXT["marker"].encode()  # what the load generator checks for

_PAGE_HEAD: str = _TEXT["page_head"]
_PAGE_ENTRY: str = _TEXT["entry"]
_PAGE_TAIL: str = _TEXT["page_tail"].format(max_name=MAX_NAME, max_message=MAX_MESSAGE)
assert PAGE_MARKER.decode() in _PAGE_TAIL


@dataclass(frozen=True)
class BackendCall:
    """Commands for the backend, RESP-encoded, and how many replies complete them."""

    commands: bytes
    replies: int


@dataclass(frozen=True)
class AppResponse:
    """What the app answers, for the HTTP core to frame."""

    status: int
    content_type: str
    body: bytes
    location: str | None = None


def unavailable() -> AppResponse:
    """The answer while Redis cannot be reached (every other route keeps working)."""
    return AppResponse(503, TEXT_TYPE, _TEXT["unavailable_body"].encode())


def _bad(reason: str) -> AppResponse:
    return AppResponse(400, TEXT_TYPE, f"{_TEXT['bad_request_prefix']}{reason}\n".encode())


class Guestbook:
    """The app's state shared by all connections: the backend wait to add."""

    path = PATH

    def __init__(self, wait_ms: float = 0.0) -> None:
        if wait_ms < 0:
            raise ValueError("the backend wait is not negative")
        self.wait_ms = wait_ms
        commands: list[tuple[resp.Arg, ...]] = []
        if wait_ms > 0:
            # BLPOP's timeout is in seconds, decimals allowed (Redis >= 6); 0 means forever.
            commands.append(("BLPOP", WAIT_KEY, f"{wait_ms / 1000:.6f}"))
        commands += [("INCR", VISITS_KEY), ("LRANGE", ENTRIES_KEY, -SHOWN, -1)]
        self._page_call = BackendCall(resp.encode_pipeline(commands), len(commands))

    # -- GET ---------------------------------------------------------------------------

    def page_call(self) -> BackendCall:
        return self._page_call

    def render_page(self, replies: list[object]) -> AppResponse:
        """The page from the replies to :meth:`page_call` (503 if Redis refused one)."""
        if len(replies) != self._page_call.replies or any(
                isinstance(r, resp.ReplyError) for r in replies):
            return unavailable()
        visits, entries = replies[-2], replies[-1]
        if not isinstance(visits, int) or not isinstance(entries, list):
            return unavailable()
        parts = [_PAGE_HEAD.format(visits=visits)]
        for raw in reversed(entries):
            name, message = _decode_entry(raw)
            parts.append(_PAGE_ENTRY.format(name=html.escape(name), message=html.escape(message)))
        parts.append(_PAGE_TAIL)
        return AppResponse(200, PAGE_TYPE, "".join(parts).encode("utf-8"))

    # -- POST --------------------------------------------------------------------------

    def post_call(self, content_type: bytes | None, body: bytes) -> BackendCall | AppResponse:
        """The commands that store a valid entry, or the 400 that refuses it."""
        media = (content_type or b"").split(b";", 1)[0].strip().lower()
        if media != FORM_TYPE.encode():
            return _bad(f"the form must be sent as {FORM_TYPE}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _bad("the form is not UTF-8")
        try:
            fields = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                               encoding="utf-8", errors="strict", max_num_fields=8)
        except (ValueError, UnicodeDecodeError):
            return _bad("the form is not valid urlencoded UTF-8")
        form: dict[str, str] = {}
        for key, value in fields:
            if key not in ("name", "message"):
                return _bad(f"unknown field {key[:32]!r}")
            if key in form:
                return _bad(f"{key} given twice")
            form[key] = value
        name = form.get("name", "").strip()
        message = form.get("message", "").strip()
        for label, value, cap in (("name", name, MAX_NAME), ("message", message, MAX_MESSAGE)):
            if not value:
                return _bad(f"{label} is missing")
            if len(value) > cap:
                return _bad(f"{label} is over {cap} characters")
            if any(ord(c) < 0x20 and c not in "\t\r\n" or ord(c) == 0x7F for c in value):
                return _bad(f"{label} holds control characters")
        if "\n" in name or "\r" in name:
            return _bad("name is one line")
        entry = json.dumps({"name": name, "message": message}, ensure_ascii=False)
        return BackendCall(resp.encode_pipeline([
            ("RPUSH", ENTRIES_KEY, entry),
            ("LTRIM", ENTRIES_KEY, -KEPT, -1),
        ]), 2)

    @staticmethod
    def finish_post(replies: list[object]) -> AppResponse:
        """303 to the page once the entry is stored; 503 if Redis refused."""
        if len(replies) != 2 or any(isinstance(r, resp.ReplyError) for r in replies):
            return unavailable()
        return AppResponse(303, TEXT_TYPE, _TEXT["see_other_body"].encode(),
                           location=PATH.decode())


def _decode_entry(raw: object) -> tuple[str, str]:
    """An entry as stored by :meth:`Guestbook.post_call`; anything else shown as text."""
    if isinstance(raw, bytes):
        try:
            entry = json.loads(raw.decode("utf-8"))
            if isinstance(entry, dict):
                return str(entry.get("name", "")), str(entry.get("message", ""))
        except (UnicodeDecodeError, ValueError):
            return "?", raw.decode("utf-8", "replace")
    return "?", str(raw)
